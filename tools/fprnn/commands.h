// The fprnn subcommands: each registers itself (options + callback) on the top-level CLI11 app.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "fprnn/io/config.h"

namespace fprnn::cli {

void add_train(CLI::App& app);
void add_eval(CLI::App& app);
void add_verify(CLI::App& app);
void add_report(CLI::App& app);
void add_bench(CLI::App& app);
void add_launch(CLI::App& app);

// Loads a config file (or the defaults when `path` is empty), applies key=value overrides and returns
// the merged JSON (validated by run_config_from_json + validate).
Json resolve_config(const std::string& path, const std::vector<std::string>& overrides);

// Prints the resolved config as an aligned table on stderr.
void print_config(const Json& cfg, const std::string& title);

}  // namespace fprnn::cli
