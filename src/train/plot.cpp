// Length-generalisation plots through gnuplot: a script + data file, rendered to PNG and SVG.
#include "fprnn/train/plot.h"

#include "fprnn/io/safetensors.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

namespace fprnn::train {
namespace {

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

std::vector<std::string> plot_length_curves(const std::string& prefix, const std::vector<Series>& series,
                                            double train_length, const std::string& title) {
  TORCH_CHECK(!series.empty(), "plot: nothing to plot");
  namespace fs = std::filesystem;
  const std::string dat = prefix + ".dat", gp = prefix + ".gp";
  // One data block per series (gnuplot `index`), columns: length, accuracy %, iterations.
  std::ostringstream data;
  for (const auto& s : series) {
    data << "# " << s.name << "\n";
    for (size_t i = 0; i < s.length.size(); ++i)
      data << s.length[i] << " " << 100.0 * s.accuracy[i] << " " << (i < s.iterations.size() ? s.iterations[i] : 0)
           << "\n";
    data << "\n\n";
  }
  io::write_file_atomic(dat, data.str());

  const std::string dat_name = fs::path(dat).filename().string();
  std::ostringstream script;
  script << "# Rendered by fprnn; re-run with: gnuplot " << fs::path(gp).filename().string() << "\n"
         << "# (from the folder that holds " << dat_name << ")\n"
         << "set termoption noenhanced\n"  // task names and paths hold '_', which would turn into subscripts
         << "set datafile separator whitespace\n"
         << "set multiplot layout 2,1 title " << quote(title) << "\n"
         << "set grid\nset key outside right top\nset xlabel 'sequence length'\n";
  if (train_length > 0)
    script << "set arrow from " << train_length << ", graph 0 to " << train_length
           << ", graph 1 nohead dashtype 2 lc rgb '#888888'\n"
           << "set label 'train length' at " << train_length << ", graph 0.95 offset 0.5,0 tc rgb '#666666'\n";
  script << "set ylabel 'full-sequence accuracy (%)'\nset yrange [0:105]\n";
  script << "plot ";
  for (size_t i = 0; i < series.size(); ++i)
    script << (i ? ", " : "") << quote(dat_name) << " index " << i << " using 1:2 with linespoints lw 2 title "
           << quote(series[i].name);
  script << "\nset ylabel 'fixed-point iterations (mean)'\nset autoscale y\nset logscale y\nunset label\n";
  script << "plot ";
  for (size_t i = 0; i < series.size(); ++i)
    script << (i ? ", " : "") << quote(dat_name) << " index " << i << " using 1:3 with linespoints lw 2 title "
           << quote(series[i].name);
  script << "\nunset multiplot\n";
  io::write_file_atomic(gp, script.str());

  std::vector<std::string> images;
  if (!have_gnuplot()) return images;
  const std::string dir = fs::path(prefix).parent_path().string();
  const std::string base = fs::path(prefix).filename().string();
  for (const auto& [ext, term] : {std::pair<std::string, std::string>{"png", "pngcairo size 900,900 font ',11'"},
                                  std::pair<std::string, std::string>{"svg", "svg size 900,900 dynamic"}}) {
    const std::string out = base + "." + ext;
    const std::string cmd = "cd " + shell_quote(dir.empty() ? "." : dir) + " && gnuplot -e " +
                            shell_quote("set terminal " + term + "; set output '" + out + ".tmp'") + " " +
                            shell_quote(fs::path(gp).filename().string()) + " >/dev/null 2>&1 && mv " +
                            shell_quote(out + ".tmp") + " " + shell_quote(out);
    if (std::system(cmd.c_str()) == 0) images.push_back(prefix + "." + ext);
  }
  return images;
}

}  // namespace fprnn::train
