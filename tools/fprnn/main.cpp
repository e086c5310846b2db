// fprnn: command-line entry. Errors from anywhere below become one line on stderr and exit status 1.
#include "commands.h"

#include "fprnn/common.h"
#include "fprnn_git_rev.h"  // generated at build time (cmake/git_rev.cmake)

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <execinfo.h>
#include <iostream>
#include <unistd.h>

namespace fprnn::cli {

Json resolve_config(const std::string& path, const std::vector<std::string>& overrides) {
  Json user = path.empty() ? Json::object() : config::load_file(path);
  // A model.layer override picks the defaults of that layer (FP-Mamba's solver settings) like a file would.
  for (const auto& o : overrides)
    if (o.rfind("model.layer=", 0) == 0 && user.value("model", Json::object()).is_object())
      user["model"]["layer"] = o.substr(12);
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

// A crash (a bug in fprnn, never bad input) prints its stack before the default action, so that a report
// can say where; the binary exports its symbols (ENABLE_EXPORTS) for readable names.
void on_fatal_signal(int sig) {
  const char msg[] = "fprnn: internal error: fatal signal; stack:\n";
  (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
  void* frames[64];
  const int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

}  // namespace

int main(int argc, char** argv) {
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) std::signal(sig, on_fatal_signal);
  fprnn::tune_allocator();
  CLI::App app{"fprnn — Fixed-Point RNNs (Movahedi et al., NeurIPS 2025) in C++/LibTorch.\n"
               "Dense, state-tracking RNNs computed as fixed points of diagonal scans plus structured mixers.\n"
               "Layers (model.layer): fprnn (FP-RNN, default), fpmamba1 (FP-Mamba1), fpmamba2 (FP-Mamba2),\n"
               "mamba1 and mamba2 (the Mamba-1 / Mamba-2 blocks run once: no mixer, no fixed-point loop)."};
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
  fprnn::cli::add_launch(app);
  if (argc > 1 && argv[1][0] != '-') {
    const std::string sub = argv[1];
    bool known = false;
    for (const CLI::App* c : app.get_subcommands([](CLI::App*) { return true; })) known = known || c->get_name() == sub;
    if (!known) {
      std::fprintf(stderr, "fprnn: error: unknown command '%s' (expected train, eval, verify, report, bench or launch; see fprnn --help)\n",
                   sub.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::RuntimeError& e) {
    return e.get_exit_code();  // a failure already reported (a launched rank's own error line)
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
