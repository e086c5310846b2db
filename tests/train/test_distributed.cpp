// Data parallelism on the CPU: gloo process groups between threads (the collectives themselves) and
// between processes started by `fprnn launch` (whole training runs). The claim under test: N ranks that
// each take 1/N of the global batch end with the same parameters as one process with the whole batch.
#include "testing.h"

#include "fprnn/io/safetensors.h"
#include "fprnn/train/distributed.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <spawn.h>
#include <sys/wait.h>

extern char** environ;

namespace fprnn::testing {
namespace {

using train::DistEnv;
using train::ProcessGroup;

// Sets environment variables for one test and restores them after.
class EnvScope {
 public:
  EnvScope(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const auto& [k, v] : vars) {
      const char* old = std::getenv(k);
      saved_.emplace_back(k, old ? std::optional<std::string>(old) : std::nullopt);
      if (v) ::setenv(k, v, 1); else ::unsetenv(k);
    }
  }
  ~EnvScope() {
    for (const auto& [k, v] : saved_) {
      if (v) ::setenv(k.c_str(), v->c_str(), 1); else ::unsetenv(k.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

std::string env_error(std::initializer_list<std::pair<const char*, const char*>> vars) {
  EnvScope scope(vars);
  try {
    (void)DistEnv::from_environment();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

TEST(DistEnvTest, ReadsTorchrunVariables) {
  {
    EnvScope none({{"RANK", nullptr}, {"WORLD_SIZE", nullptr}, {"LOCAL_RANK", nullptr}, {"MASTER_PORT", nullptr}});
    const DistEnv e = DistEnv::from_environment();
    EXPECT_FALSE(e.active());
    EXPECT_EQ(e.world, 1);
    EXPECT_EQ(e.rank, 0);
  }
  EnvScope job({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.2"},
                {"MASTER_PORT", "29511"}});
  const DistEnv e = DistEnv::from_environment();
  EXPECT_TRUE(e.active());
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world, 4);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "10.0.0.2");
  EXPECT_EQ(e.master_port, 29511);
}

TEST(DistEnvTest, InconsistentVariablesAreOneLineErrors) {
  EXPECT_NE(env_error({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "29500"}}).find("outside [0, WORLD_SIZE=2)"),
            std::string::npos);
  EXPECT_NE(env_error({{"RANK", "x"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "29500"}}).find("RANK='x'"),
            std::string::npos);
  EXPECT_NE(env_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", nullptr}}).find("needs MASTER_PORT"),
            std::string::npos);
  EXPECT_NE(env_error({{"RANK", "0"}, {"WORLD_SIZE", "0"}, {"MASTER_PORT", "1"}}).find("WORLD_SIZE"),
            std::string::npos);
}

TEST(ProcessGroupTest, ThisBuildHasGloo) {
  // scripts/setup.sh installs libgloo-dev; without it CPU data parallelism is silently missing.
  EXPECT_TRUE(train::have_backend("gloo"));
}

// Runs fn(rank, group) on `world` threads, each a rank of one gloo group, and rethrows the first error.
void on_threads(int world, int port, const std::function<void(int, ProcessGroup&)>& fn) {
  std::vector<std::future<void>> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.push_back(std::async(std::launch::async, [=]() {
      DistEnv env;
      env.rank = r;
      env.local_rank = r;
      env.world = world;
      env.master_port = port;
      ProcessGroup group(env, torch::kCPU, 60);
      fn(r, group);
    }));
  }
  for (auto& f : ranks) f.get();
}

int test_port(int offset) { return 20000 + (::getpid() * 7 + offset) % 20000; }

TEST(ProcessGroupTest, AllReduceSumsEveryTensorOfEveryDtype) {
  const int world = 3;
  std::vector<std::vector<Tensor>> results(world);
  on_threads(world, test_port(1), [&](int r, ProcessGroup& g) {
    EXPECT_EQ(g.backend(), "gloo");
    EXPECT_EQ(g.world(), world);
    std::vector<Tensor> ts{torch::full({2, 3}, 1.0 + r, torch::kFloat64), torch::arange(5, torch::kFloat32) * (r + 1),
                           torch::full({1}, r, torch::kFloat64), torch::full({4}, int64_t(r), torch::kLong)};
    g.all_reduce_sum(ts);
    results[r] = ts;
  });
  for (int r = 0; r < world; ++r) {
    const auto& ts = results[r];
    EXPECT_TRUE(torch::equal(ts[0], torch::full({2, 3}, 6.0, torch::kFloat64))) << r;
    EXPECT_TRUE(torch::equal(ts[1], torch::arange(5, torch::kFloat32) * 6)) << r;
    EXPECT_TRUE(torch::equal(ts[2], torch::full({1}, 3.0, torch::kFloat64))) << r;
    EXPECT_TRUE(torch::equal(ts[3], torch::full({4}, int64_t(3), torch::kLong))) << r;
  }
}

TEST(ProcessGroupTest, BroadcastCopiesTheRootsValuesIntoParameters) {
  const int world = 2;
  std::vector<Tensor> results(world);
  on_threads(world, test_port(2), [&](int r, ProcessGroup& g) {
    // A parameter (requires grad) is written in place.
    Tensor p = torch::full({3}, 10.0 * (r + 1), torch::kFloat64).set_requires_grad(true);
    g.broadcast({p}, 1);
    g.barrier();
    results[r] = p.detach();
  });
  for (int r = 0; r < world; ++r) EXPECT_TRUE(torch::equal(results[r], torch::full({3}, 20.0, torch::kFloat64)));
}

TEST(ProcessGroupTest, NcclOnOneGpu) {
  // A group of one still goes through NCCL: creation, all-reduce and broadcast on CUDA tensors.
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a GPU";
  ASSERT_TRUE(train::have_backend("nccl"));
  DistEnv env;
  env.master_port = test_port(3);
  ProcessGroup g(env, torch::Device(torch::kCUDA, 0), 60);
  EXPECT_EQ(g.backend(), "nccl");
  const auto cuda = torch::TensorOptions().device(torch::kCUDA, 0);
  std::vector<Tensor> ts{torch::arange(6, cuda.dtype(torch::kFloat32)).reshape({2, 3}),
                         torch::full({4}, 2.5, cuda.dtype(torch::kFloat64)),
                         torch::ones({3}, cuda.dtype(torch::kBFloat16))};
  std::vector<Tensor> before;
  for (const auto& t : ts) before.push_back(t.clone());
  g.all_reduce_sum(ts);
  g.broadcast(ts, 0);
  g.barrier();
  for (size_t i = 0; i < ts.size(); ++i) EXPECT_TRUE(torch::equal(ts[i], before[i])) << i;
}

// ---- whole runs through `fprnn launch` --------------------------------------------------------------

int run_cli(const std::string& args, std::string* err = nullptr) {
  const std::string dir = temp_dir("dist_cli");
  std::string script = std::string(FPRNN_CLI_PATH) + " " + args + " >" + dir + "/out 2>" + dir + "/err";
  std::string sh = "/bin/sh", dash_c = "-c";
  char* argv[] = {sh.data(), dash_c.data(), script.data(), nullptr};
  pid_t pid = 0;
  int raw = -1;
  if (posix_spawn(&pid, "/bin/sh", nullptr, nullptr, argv, environ) == 0) waitpid(pid, &raw, 0);
  if (err) {
    std::ifstream in(dir + "/err");
    *err = std::string(std::istreambuf_iterator<char>(in), {});
  }
  return WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
}

// float64 and a fixed number of solver iterations (threshold never met): the fixed-point solver's stopping
// rule looks at each rank's own batch (its quantile), so only a fixed count makes N ranks comparable to
// one process exactly. With the usual threshold each rank stops on its own share, as data-parallel runs of
// the reference do.
std::string run_args(const std::string& task_args) {
  return "--config " FPRNN_SOURCE_DIR "/configs/demo_s3.json " + task_args +
         " model.d_model=16 train.steps=3 train.batch_size=8 train.dtype=float64 solver.max_iter=3 "
         "solver.threshold=1e-30 train.eval_every=0 train.log_every=1 train.checkpoint_every=1 --no-eval -q";
}

void expect_same_parameters(const std::string& a, const std::string& b, double tol) {
  const auto x = io::load_safetensors(a), y = io::load_safetensors(b);
  ASSERT_EQ(x.tensors.size(), y.tensors.size());
  int compared = 0;
  double worst = 0;
  for (const auto& [name, t] : x.tensors) {
    ASSERT_TRUE(y.has(name)) << name;
    worst = std::max(worst, (t - y.at(name)).abs().max().item<double>());
    ++compared;
  }
  EXPECT_GT(compared, 10);
  EXPECT_LT(worst, tol) << a << " vs " << b;
}

class LaunchTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LaunchTest, TwoRanksMatchOneProcessWithTheWholeBatch) {
  const std::string dir = temp_dir("launch");
  const std::string args = run_args(GetParam());
  std::string err;
  ASSERT_EQ(run_cli("train " + args + " --out " + dir + "/one", &err), 0) << err;
  ASSERT_EQ(run_cli("launch --nproc 2 -- train " + args + " --out " + dir + "/two", &err), 0) << err;
  expect_same_parameters(dir + "/one/model.safetensors", dir + "/two/model.safetensors", 1e-12);
  // The optimiser state too: both live in the checkpoint.
  expect_same_parameters(dir + "/one/checkpoints/last.safetensors", dir + "/two/checkpoints/last.safetensors", 1e-12);
  // Only rank 0 writes: one config, one metrics line per step.
  std::ifstream m(dir + "/two/metrics.jsonl");
  int lines = 0;
  for (std::string l; std::getline(m, l);) lines += l.find("\"split\":\"train\"") != std::string::npos;
  EXPECT_EQ(lines, 3);
  // And a change of the batch split must show: a different global batch gives different parameters.
  ASSERT_EQ(run_cli("train " + args + " train.batch_size=4 --out " + dir + "/half", &err), 0) << err;
  const auto a = io::load_safetensors(dir + "/one/model.safetensors"), b = io::load_safetensors(dir + "/half/model.safetensors");
  double diff = 0;
  for (const auto& [name, t] : a.tensors) diff = std::max(diff, (t - b.at(name)).abs().max().item<double>());
  EXPECT_GT(diff, 1e-6) << "the comparison above could not fail";
}

// Word problems (PAD positions counted in the loss, as the reference does) and parity (masked positions:
// the loss is normalised by the global count of counted positions, not each rank's).
INSTANTIATE_TEST_SUITE_P(Tasks, LaunchTest,
                         ::testing::Values("task.samples_per_length=200 task.eval_max_length=8",
                                           "task.name=parity task.train_length=8 task.min_train_length=3 "
                                           "task.val_samples=16 task.val_max_length=8 task.eval_max_length=8"),
                         [](const auto& info) { return info.index == 0 ? std::string("WordProblem") : std::string("Parity"); });

TEST(LaunchTest, TwoGpusMatchOneGpu) {
  if (!torch::cuda::is_available() || torch::cuda::device_count() < 2) GTEST_SKIP() << "needs two GPUs (NCCL)";
  const std::string dir = temp_dir("launch_gpu");
  const std::string args = run_args("task.samples_per_length=200 task.eval_max_length=8") + " train.device=cuda";
  std::string err;
  ASSERT_EQ(run_cli("train " + args + " --out " + dir + "/one", &err), 0) << err;
  ASSERT_EQ(run_cli("launch --gpus 2 -- train " + args + " --out " + dir + "/two", &err), 0) << err;
  // float64 throughout; the GPU reductions' order differs with the batch split, hence not 1e-12.
  expect_same_parameters(dir + "/one/model.safetensors", dir + "/two/model.safetensors", 1e-9);
}

TEST(LaunchTest, ResumesOnADifferentNumberOfProcesses) {
  const std::string dir = temp_dir("launch_resume");
  const std::string args = run_args("task.samples_per_length=200 task.eval_max_length=8");
  std::string err;
  ASSERT_EQ(run_cli("train " + args + " --out " + dir + "/one", &err), 0) << err;
  // Two ranks for two steps, then one process for the last.
  ASSERT_EQ(run_cli("launch -n 2 -- train " + args + " --stop-after 2 --out " + dir + "/mixed", &err), 0) << err;
  ASSERT_EQ(run_cli("train --resume --out " + dir + "/mixed -q --no-eval", &err), 0) << err;
  expect_same_parameters(dir + "/one/model.safetensors", dir + "/mixed/model.safetensors", 1e-12);
}

TEST(LaunchTest, BadInputIsOneLine) {
  const std::string dir = temp_dir("launch_bad");
  std::string err;
  // Every rank fails alike: one line, not one per rank.
  EXPECT_NE(run_cli("launch -n 2 -- train " + run_args("task.group=Q99") + " --out " + dir + "/a", &err), 0);
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_NE(err.find("Q99"), std::string::npos) << err;
  // A global batch that does not split.
  EXPECT_NE(run_cli("launch -n 3 -- train " + run_args("") + " --out " + dir + "/b", &err), 0);
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_NE(err.find("does not split over 3 processes"), std::string::npos) << err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/b/config.json"));
  // No command.
  EXPECT_NE(run_cli("launch -n 2", &err), 0);
  EXPECT_NE(err.find("command"), std::string::npos) << err;
}

}  // namespace
}  // namespace fprnn::testing
