// `fprnn launch`: runs N copies of an fprnn command as one data-parallel job on this machine, with the
// environment torchrun would give them (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
#include "commands.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace fprnn::cli {
namespace {

// A TCP port that was free a moment ago (the kernel's choice for port 0 on the loopback interface).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  TORCH_CHECK(fd >= 0, "launch: cannot open a socket to find a free port: ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  TORCH_CHECK(ok, "launch: cannot find a free TCP port: ", std::strerror(errno));
  return ntohs(addr.sin_port);
}

std::string last_line_of(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

}  // namespace

void add_launch(CLI::App& app) {
  struct Args {
    int nproc = 0;
    int port = 0;
    std::vector<std::string> command;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "launch", "Run an fprnn command as N data-parallel processes on this machine (one per GPU with\n"
                "train.device=cuda; gloo between CPU processes otherwise).");
  cmd->footer(
      "Example: fprnn launch --gpus 2 -- train --config configs/lm.json --out runs/lm2\n"
      "Each process gets torchrun's variables (RANK, LOCAL_RANK = its GPU, WORLD_SIZE, MASTER_ADDR,\n"
      "MASTER_PORT); train.batch_size is the global batch, split evenly. Rank 0 writes the run directory;\n"
      "its checkpoints resume on any number of processes. Rank 0's output is shown; the other ranks' stderr\n"
      "goes to <tmp>/fprnn-launch-<pid>/rank<r>.log and its last line is reported if that rank fails.");
  cmd->add_option("--nproc,--gpus,-n", args->nproc, "Number of processes (GPUs)")->required()->check(CLI::Range(1, 1024));
  cmd->add_option("--port", args->port, "Rendezvous port on 127.0.0.1 (default: a free one)")->check(CLI::Range(1, 65535));
  cmd->add_option("command", args->command, "The fprnn command to run, after --")->required();
  cmd->callback([args]() {
    const int n = args->nproc;
    const int port = args->port > 0 ? args->port : free_port();
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    const std::string log_dir =
        (std::filesystem::temp_directory_path() / ("fprnn-launch-" + std::to_string(::getpid()))).string();
    std::filesystem::create_directories(log_dir);

    // Without OMP_NUM_THREADS, share the cores (as torchrun does, which sets 1).
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    const std::string threads = std::to_string(std::max(1u, cores / static_cast<unsigned>(n)));

    std::vector<std::string> base_env;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string kv = *e;
      const std::string key = kv.substr(0, kv.find('='));
      if (key == "RANK" || key == "LOCAL_RANK" || key == "WORLD_SIZE" || key == "MASTER_ADDR" ||
          key == "MASTER_PORT" || key == "LOCAL_WORLD_SIZE")
        continue;
      base_env.push_back(kv);
    }
    if (std::getenv("OMP_NUM_THREADS") == nullptr) base_env.push_back("OMP_NUM_THREADS=" + threads);

    // Ctrl-C reaches every process of the foreground group: the ranks stop together after the current
    // step (see the trainer); the launcher itself just waits for them.
    std::signal(SIGINT, SIG_IGN);

    std::vector<pid_t> pids(static_cast<size_t>(n), -1);
    for (int r = 0; r < n; ++r) {
      std::vector<std::string> env = base_env;
      env.push_back("RANK=" + std::to_string(r));
      env.push_back("LOCAL_RANK=" + std::to_string(r));
      env.push_back("WORLD_SIZE=" + std::to_string(n));
      env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(n));
      env.push_back("MASTER_ADDR=127.0.0.1");
      env.push_back("MASTER_PORT=" + std::to_string(port));
      std::vector<std::string> argv_s{self};
      argv_s.insert(argv_s.end(), args->command.begin(), args->command.end());
      std::vector<char*> argv_p, env_p;
      for (auto& a : argv_s) argv_p.push_back(a.data());
      argv_p.push_back(nullptr);
      for (auto& e : env) env_p.push_back(e.data());
      env_p.push_back(nullptr);

      posix_spawn_file_actions_t fa;
      posix_spawn_file_actions_init(&fa);
      const std::string log = log_dir + "/rank" + std::to_string(r) + ".log";
      if (r > 0) {
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      }
      posix_spawnattr_t attr;
      posix_spawnattr_init(&attr);
      sigset_t def;
      sigemptyset(&def);
      sigaddset(&def, SIGINT);
      posix_spawnattr_setsigdefault(&attr, &def);  // the children take Ctrl-C (the launcher ignores it)
      posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
      const int rc = posix_spawn(&pids[r], self.c_str(), &fa, &attr, argv_p.data(), env_p.data());
      posix_spawn_file_actions_destroy(&fa);
      posix_spawnattr_destroy(&attr);
      if (rc != 0) {
        for (int q = 0; q < r; ++q) ::kill(pids[q], SIGTERM);
        for (int q = 0; q < r; ++q) ::waitpid(pids[q], nullptr, 0);
        TORCH_CHECK(false, "launch: cannot start rank ", r, ": ", std::strerror(rc));
      }
    }

    // Wait for all; the first failure takes the others down (a rank stuck in a collective would wait for
    // its timeout otherwise), after a grace period: bad input fails every rank alike, and rank 0, whose error
    // line is the one shown, must not be killed between printing it and exiting (on a busy machine another
    // rank often failed first, and the user got two lines).
    constexpr auto kGrace = std::chrono::seconds(3);
    std::vector<int> status(static_cast<size_t>(n), 0);
    int remaining = n, first_failed = -1;
    bool killed = false;
    std::chrono::steady_clock::time_point deadline;
    while (remaining > 0) {
      int st = 0;
      const bool waiting_for_grace = first_failed >= 0 && !killed;
      const pid_t pid = ::waitpid(-1, &st, waiting_for_grace ? WNOHANG : 0);
      if (pid == 0) {
        if (std::chrono::steady_clock::now() >= deadline) {
          for (int q = 0; q < n; ++q)
            if (pids[q] > 0) ::kill(pids[q], SIGTERM);
          killed = true;
        } else {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        continue;
      }
      if (pid < 0) {
        if (errno == EINTR) continue;
        break;
      }
      int r = -1;
      for (int q = 0; q < n; ++q)
        if (pids[q] == pid) r = q;
      if (r < 0) continue;
      --remaining;
      pids[r] = -1;
      status[r] = st;
      const bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
      if (!ok && first_failed < 0) {
        first_failed = r;
        deadline = std::chrono::steady_clock::now() + kGrace;
      }
    }
    std::signal(SIGINT, SIG_DFL);
    if (first_failed < 0) {
      std::error_code ec;
      for (int r = 1; r < n; ++r) std::filesystem::remove(log_dir + "/rank" + std::to_string(r) + ".log", ec);
      std::filesystem::remove(log_dir, ec);
      return;
    }
    // Rank 0 failing on its own (bad input fails every rank alike) has printed its one line already.
    if (WIFEXITED(status[0]) && WEXITSTATUS(status[0]) != 0) throw CLI::RuntimeError(WEXITSTATUS(status[0]));
    const int st = status[first_failed];
    const std::string why = WIFEXITED(st) ? "exit status " + std::to_string(WEXITSTATUS(st))
                                          : "signal " + std::to_string(WTERMSIG(st));
    const std::string line =
        first_failed == 0 ? std::string("(see above)")
                          : last_line_of(log_dir + "/rank" + std::to_string(first_failed) + ".log");
    TORCH_CHECK(false, "launch: rank ", first_failed, " failed (", why, "): ", line, " (logs in ", log_dir, ")");
  });
}

}  // namespace fprnn::cli
