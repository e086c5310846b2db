// `fprnn verify`: compare the layer against golden fixtures; prints JSON, exit 0 only if all match.
#include "commands.h"

#include "fprnn/verify/verify.h"

#include <cstdio>
#include <memory>

namespace fprnn::cli {

void add_verify(CLI::App& app) {
  struct Args {
    std::vector<std::string> files;
    double tolerance = 1e-8;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "verify", "Check the FPRNN / FP-Mamba1 layer against reference fixtures (outputs, fixed points, iteration counts, gradients).");
  cmd->footer("Prints one JSON object (for several files: {\"ok\": ..., \"files\": [...]}). Exit status 0 only\n"
              "if every tensor's RMS ratio is within the tolerance and every iteration count is equal.");
  cmd->add_option("files", args->files, "Fixture .safetensors files (e.g. ../shared/fixtures/reference_fprnn/*, reference_fpmamba1/*)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--tolerance", args->tolerance, "RMS-ratio tolerance per tensor (float64)")
      ->capture_default_str();
  cmd->callback([args]() {
    bool ok = true;
    Json all = Json::array();
    for (const auto& f : args->files) {
      const verify::Report r = verify::verify_fixture(f, args->tolerance);
      ok = ok && r.ok();
      all.push_back(r.to_json());
    }
    const Json out = all.size() == 1 ? all[0] : Json{{"ok", ok}, {"files", all}};
    std::printf("%s\n", out.dump(2).c_str());
    if (!ok) throw std::runtime_error("verify: some tensors or iteration counts do not match (see the JSON above)");
  });
}

}  // namespace fprnn::cli
