// The command line: --help for every subcommand, and bad input → one line on stderr, non-zero exit.
#include "testing.h"

#include "fprnn/io/config.h"
#include "fprnn/io/safetensors.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace fprnn::testing {
namespace {

struct Result {
  int status = -1;
  std::string out, err;
};

// Runs the fprnn binary with `args` (a shell fragment), capturing stdout and stderr separately. posix_spawn
// rather than system(): no fork of a large test process (with a CUDA context, fork is fragile).
Result run(const std::string& args) {
  const std::string dir = temp_dir("cli");
  const std::string cmd = std::string(FPRNN_CLI_PATH) + " " + args + " >" + dir + "/out 2>" + dir + "/err";
  Result r;
  std::string sh = "/bin/sh", dash_c = "-c", script = cmd;
  char* argv[] = {sh.data(), dash_c.data(), script.data(), nullptr};
  pid_t pid = 0;
  int raw = -1;
  if (posix_spawn(&pid, "/bin/sh", nullptr, nullptr, argv, environ) == 0) waitpid(pid, &raw, 0);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  auto slurp = [](const std::string& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  r.out = slurp(dir + "/out");
  r.err = slurp(dir + "/err");
  return r;
}

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

void expect_one_line_error(const std::string& args, const std::string& needle) {
  const Result r = run(args);
  EXPECT_NE(r.status, 0) << args;
  EXPECT_EQ(lines(r.err), 1) << args << " printed:\n" << r.err;
  EXPECT_EQ(r.err.rfind("fprnn: error: ", 0), 0u) << args << ": " << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << args << ": expected '" << needle << "' in: " << r.err;
  EXPECT_EQ(r.err.find("Exception raised"), std::string::npos) << "no stack traces";
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos);
}

TEST(CliTest, HelpForEverySubcommand) {
  for (const std::string sub : {"", "train", "eval", "verify", "report", "bench", "launch"}) {
    const Result r = run(sub + " --help");
    EXPECT_EQ(r.status, 0) << sub;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << sub << ": " << r.out;
  }
  // The top-level help names every layer type.
  const Result top = run("--help");
  for (const char* layer : {"fprnn", "fpmamba1", "mamba1", "fpmamba2", "mamba2"})
    EXPECT_NE(top.out.find(layer), std::string::npos) << layer << " missing from fprnn --help";
  const Result v = run("--version");
  EXPECT_EQ(v.status, 0);
  EXPECT_NE(v.out.find("LibTorch"), std::string::npos);
}

TEST(CliTest, BadInputIsOneClearLine) {
  const std::string dir = temp_dir("clibad");
  io::write_file_atomic(dir + "/corrupt.json", "{\"model\": ");
  io::write_file_atomic(dir + "/corrupt.safetensors", "not a safetensors file at all");
  expect_one_line_error("frobnicate", "frobnicate");
  expect_one_line_error("", "subcommand");
  expect_one_line_error("train --config " + dir + "/missing.json --out " + dir + "/r", "missing.json");
  expect_one_line_error("train --config " + dir + "/corrupt.json --out " + dir + "/r", "malformed JSON");
  expect_one_line_error("train --out " + dir + "/r model.mixer_type=dense", "model.mixer_type");
  expect_one_line_error("train --out " + dir + "/r task.group=Q8", "Q8");
  expect_one_line_error("train --out " + dir + "/r model.d_model=0", "model.d_model");
  expect_one_line_error("train --out " + dir + "/r task.train_length=-3", "train_length");
  expect_one_line_error("train --out " + dir + "/r model.nope=1", "unknown key");
  expect_one_line_error("train --out " + dir + "/r model.layer=mamba3", "valid: fprnn, fpmamba1, mamba1, fpmamba2, mamba2");
  expect_one_line_error("train --out " + dir + "/r model.layer=fpmamba2 model.headdim=48", "model.headdim");
  expect_one_line_error("train --out " + dir + "/r task.name=dyck", "valid: word_problem, copy");
  expect_one_line_error("train --out " + dir + "/r task.name=copy task.context_length=10", "task.context_length");
  expect_one_line_error("train --out " + dir + "/r task.name=modular_arithmetic task.min_train_length=1",
                        "modular_arithmetic");
  expect_one_line_error("train --out " + dir + "/r --resume", "nothing to resume");
  expect_one_line_error("eval --checkpoint " + dir + "/corrupt.safetensors", "corrupt.safetensors");
  expect_one_line_error("verify " + dir + "/corrupt.safetensors", "corrupt.safetensors");
  expect_one_line_error("verify " + dir + "/absent.safetensors", "absent.safetensors");
  expect_one_line_error("bench no_such_case", "no_such_case");
  expect_one_line_error("report " + dir, "eval.csv");
  EXPECT_FALSE(std::filesystem::exists(dir + "/r/metrics.jsonl")) << "a rejected run must not start writing";
}

TEST(CliTest, VerifyPrintsJsonAndSucceedsOnAFixture) {
  const Result r = run("verify " + fixtures_dir() + "/reference_fprnn/fprnn_h1.safetensors");
  EXPECT_EQ(r.status, 0) << r.err;
  const Json j = Json::parse(r.out);
  EXPECT_TRUE(j["ok"].get<bool>());
  EXPECT_EQ(j["iterations"]["iters_train"]["ours"], j["iterations"]["iters_train"]["reference"]);
  EXPECT_LE(j["tensors"]["y_train"]["rms_ratio"].get<double>(), 1e-8);
  // An impossible tolerance makes it fail with a non-zero exit but still print the JSON.
  const Result f = run("verify --tolerance 1e-30 " + fixtures_dir() + "/reference_fprnn/fprnn_h1.safetensors");
  EXPECT_NE(f.status, 0);
  EXPECT_FALSE(Json::parse(f.out)["ok"].get<bool>());
}

TEST(CliTest, TrainEvalReportEndToEnd) {
  const std::string dir = temp_dir("clie2e");
  const std::string common = " task.group=Z5 task.train_length=3 model.d_model=16 train.steps=4 train.batch_size=32"
                             " task.eval_max_length=6 task.eval_samples=64 --quiet";
  Result t = run("train --out " + dir + "/a" + common);
  ASSERT_EQ(t.status, 0) << t.err;
  EXPECT_NE(t.out.find("length"), std::string::npos);
  t = run("train --out " + dir + "/b solver.max_iter=1 solver.eval_max_iter=1" + common);
  ASSERT_EQ(t.status, 0) << t.err;
  const Result e = run("eval --checkpoint " + dir + "/a/model.safetensors --lengths 2:4:2 --solver sequential --quiet");
  EXPECT_EQ(e.status, 0) << e.err;
  EXPECT_TRUE(std::filesystem::exists(dir + "/a/eval_cli/eval.csv"));
  const Result p = run("report " + dir + "/a " + dir + "/b --names fp diag --out " + dir + "/cmp");
  EXPECT_EQ(p.status, 0) << p.err;
  EXPECT_NE(p.out.find("| fp |"), std::string::npos) << p.out;
  // The summary table names the task, the model and the iteration caps of each run.
  EXPECT_NE(p.out.find("| fp | word_problem Z5 | 3 | fprnn 1×16, householderproduct r="), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("| 1 / 1 |"), std::string::npos) << p.out;
  EXPECT_TRUE(std::filesystem::exists(dir + "/cmp.md"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/cmp.png"));
}

TEST(CliTest, GeneratedTaskTrainAndEval) {
  // A formal-language run and `fprnn eval` of its checkpoint over other lengths.
  const std::string dir = temp_dir("clitask");
  const Result t = run("train --out " + dir + "/p task.name=parity task.min_train_length=3 task.train_length=6"
                       " task.val_min_length=6 task.val_max_length=6 task.val_samples=32 task.eval_min_length=4"
                       " task.eval_max_length=8 task.eval_samples=32 model.d_model=16 train.steps=3"
                       " train.batch_size=16 solver.eval_max_iter=20 --quiet");
  ASSERT_EQ(t.status, 0) << t.err;
  const Result e = run("eval --checkpoint " + dir + "/p/model.safetensors --lengths 10:14:2 --samples 16 --quiet");
  ASSERT_EQ(e.status, 0) << e.err;
  std::ifstream in(dir + "/p/eval_cli/eval.csv");
  std::string line;
  std::vector<std::string> rows;
  while (std::getline(in, line)) rows.push_back(line);
  ASSERT_EQ(rows.size(), 4u) << "header + lengths 10, 12, 14";
  EXPECT_EQ(rows[1].rfind("10,16,", 0), 0u) << rows[1];
  EXPECT_EQ(rows[3].rfind("14,16,", 0), 0u) << rows[3];
}

}  // namespace
}  // namespace fprnn::testing
