// Plots of accuracy and fixed-point iterations against sequence length, rendered by gnuplot (PNG via
// pngcairo and SVG). The gnuplot script and its data are written beside the images, so a plot can be
// re-rendered or edited by hand.
#pragma once

#include <string>
#include <vector>

namespace fprnn::train {

struct Series {
  std::string name;
  std::vector<double> length, accuracy, iterations;  // accuracy in [0, 1]; iterations mean (layer 0)
};

// Writes <prefix>.gp, <prefix>.dat and, when gnuplot is installed, <prefix>.png and <prefix>.svg.
// A vertical line marks train_length (≤ 0: none). Returns the image files written (empty without gnuplot).
std::vector<std::string> plot_length_curves(const std::string& prefix, const std::vector<Series>& series,
                                            double train_length, const std::string& title);

// True when `gnuplot` is on the PATH.
bool have_gnuplot();

}  // namespace fprnn::train
