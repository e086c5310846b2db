// fprnn: command-line entry. Errors from anywhere below become one line on stderr and exit status 1.
#include "commands.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <cstdio>
#include <iostream>

namespace fprnn::cli {

Json resolve_config(const std::string& path, const std::vector<std::string>& overrides) {
  Json user = path.empty() ? Json::object() : config::load_file(path);
  Json cfg = to_json(run_config_from_json(user));  // merges over defaults, rejects unknown keys
  for (const auto& o : overrides) config::apply_override(cfg, o);
  const RunConfig parsed = run_config_from_json(cfg);
  validate(parsed);
  return to_json(parsed);
}

void print_config(const Json& cfg, const std::string& title) {
  std::fprintf(stderr, "%s\n%s", title.c_str(), config::format_table(cfg).c_str());
}

}  // namespace fprnn::cli

namespace {

// The first line of an error message, without LibTorch's backtrace.
std::string first_line(const std::string& msg) {
  const auto nl = msg.find('\n');
  return nl == std::string::npos ? msg : msg.substr(0, nl);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fprnn — Fixed-Point RNNs (Movahedi et al., NeurIPS 2025) in C++/LibTorch.\n"
               "Dense, state-tracking RNNs computed as fixed points of diagonal scans plus structured mixers."};
  app.set_version_flag("--version", std::string("fprnn ") + FPRNN_VERSION + " (" + FPRNN_GIT_REV + ", LibTorch " +
                                        std::to_string(TORCH_VERSION_MAJOR) + "." +
                                        std::to_string(TORCH_VERSION_MINOR) + "." +
                                        std::to_string(TORCH_VERSION_PATCH) + ")");
  app.require_subcommand(1, 1);
  app.fallthrough(false);
  fprnn::cli::add_train(app);
  fprnn::cli::add_eval(app);
  fprnn::cli::add_verify(app);
  fprnn::cli::add_report(app);
  fprnn::cli::add_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "fprnn: error: %s (see fprnn --help)\n", first_line(e.what()).c_str());
    return e.get_exit_code() != 0 ? e.get_exit_code() : 2;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "fprnn: error: %s\n", first_line(e.what_without_backtrace()).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fprnn: error: %s\n", first_line(e.what()).c_str());
    return 1;
  }
  return 0;
}
