// Stand-in for `fprnn bench` when the build has FPRNN_BUILD_BENCH=OFF.
#include "commands.h"

namespace fprnn::cli {

void add_bench(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("bench", "Benchmarks (not built: configure with -DFPRNN_BUILD_BENCH=ON)");
  cmd->callback([]() { TORCH_CHECK(false, "bench: this build has no benchmarks (configure with -DFPRNN_BUILD_BENCH=ON)"); });
}

}  // namespace fprnn::cli
