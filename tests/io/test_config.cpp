// Run configuration: defaults, merging, dotted overrides, validation and one-line errors.
#include "testing.h"

#include "fprnn/io/config.h"
#include "fprnn/io/safetensors.h"

namespace fprnn::testing {
namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

TEST(ConfigTest, DefaultsRoundTripThroughJson) {
  const RunConfig a;
  const RunConfig b = run_config_from_json(to_json(a));
  EXPECT_EQ(to_json(a), to_json(b));
  EXPECT_NO_THROW(validate(a));
  // The reference's FPRNN solver defaults (spec §8).
  EXPECT_EQ(a.solver.threshold, 0.1);
  EXPECT_EQ(a.solver.outlier_quantile, 0.1);
  EXPECT_EQ(a.solver.eval_max_iter, 1000);
  EXPECT_EQ(a.solver.stepsize, 1.0);
}

TEST(ConfigTest, PartialFilesMergeOverDefaults) {
  const RunConfig c = run_config_from_json(Json::parse(R"({"model": {"mixer_type": "kronecker"}, "train": {"lr": 0.5}})"));
  EXPECT_EQ(c.model.layer.mixer_type, "kronecker");
  EXPECT_EQ(c.train.lr, 0.5);
  EXPECT_EQ(c.train.batch_size, RunConfig{}.train.batch_size);
}

TEST(ConfigTest, OverridesParseByType) {
  Json j = to_json(RunConfig{});
  config::apply_override(j, "model.mixer_type=dplr");
  config::apply_override(j, "model.mixer_rank=3");
  config::apply_override(j, "train.lr=1e-4");
  config::apply_override(j, "model.mixer_h_dep=false");
  config::apply_override(j, "solver.max_iter=-1");
  const RunConfig c = run_config_from_json(j);
  EXPECT_EQ(c.model.layer.mixer_type, "dplr");
  EXPECT_EQ(c.model.layer.mixer_rank, 3);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-4);
  EXPECT_FALSE(c.model.layer.mixer_h_dep);
  EXPECT_EQ(c.solver.max_iter, -1);
}

TEST(ConfigTest, BadOverridesAndKeysAreOneLineErrors) {
  Json j = to_json(RunConfig{});
  EXPECT_NE(error_of([&] { config::apply_override(j, "model.no_such_key=1"); }).find("unknown key 'model.no_such_key'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { config::apply_override(j, "model.mixer_rank=two"); }).find("cannot parse"), std::string::npos);
  EXPECT_NE(error_of([&] { config::apply_override(j, "model.mixer_rank=2.5"); }).find("integer"), std::string::npos);
  EXPECT_NE(error_of([&] { config::apply_override(j, "model"); }).find("section.key=value"), std::string::npos);
  EXPECT_NE(error_of([&] { config::apply_override(j, "model=3"); }).find("is a section"), std::string::npos);
  EXPECT_NE(error_of([&] { config::apply_override(j, "model.use_short_conv=maybe"); }).find("true or false"),
            std::string::npos);
  EXPECT_NE(error_of([&] { run_config_from_json(Json::parse(R"({"trian": {}})")); }).find("unknown key 'trian'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { run_config_from_json(Json::parse(R"({"train": {"steps": "many"}})")); }).find("integer"),
            std::string::npos);
}

TEST(ConfigTest, ValidationNamesTheKey) {
  auto msg = [](const std::function<void(RunConfig&)>& edit) {
    RunConfig c;
    edit(c);
    return error_of([&] { validate(c); });
  };
  EXPECT_NE(msg([](RunConfig& c) { c.model.layer.mixer_type = "dense"; }).find("model.mixer_type"), std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c.model.layer.mixer_type = "dense"; }).find("householderproduct"),
            std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c.model.layer.d_model = -4; }).find("model.d_model"), std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c.task.train_length = 1; }).find("train_length"), std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c.train.batch_size = 0; }).find("train.batch_size"), std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c.solver.eval_method = "newton"; }).find("solver.eval_method"), std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c.train.dtype = "int8"; }).find("train.dtype"), std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c.train.lr = std::nan(""); }).find("train.lr"), std::string::npos);
}

TEST(ConfigTest, CudaGraphNeedsTheDeviceLoop) {
  auto msg = [](const std::function<void(RunConfig&)>& edit) {
    RunConfig c;
    c.train.cuda_graph = true;
    c.train.device = "cuda";
    edit(c);
    return error_of([&] { validate(c); });
  };
  EXPECT_EQ(msg([](RunConfig&) {}), "");  // FPRNN, Householder, fixed cap, float32: fine
  EXPECT_EQ(msg([](RunConfig& c) { c.model.layer.mixer_type = "dplr"; }), "");
  EXPECT_NE(msg([](RunConfig& c) { c.train.device = "cpu"; }).find("train.cuda_graph needs train.device = cuda"),
            std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c = default_run_config("fpmamba1"), c.train.cuda_graph = true, c.train.device = "cuda"; })
                .find("FPRNN layers only"),
            std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c.model.layer.mixer_type = "kronecker"; }).find("device loop"), std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c.train.dtype = "float64"; }).find("device loop"), std::string::npos);
  EXPECT_NE(msg([](RunConfig& c) { c.solver.max_iter = -1; }).find("fixed training cap"), std::string::npos);
}

TEST(ConfigTest, FilesLoadOrFailClearly) {
  const std::string dir = temp_dir("cfg");
  io::write_file_atomic(dir + "/ok.json", R"({"task": {"group": "A4"}} // comments are allowed)");
  EXPECT_EQ(run_config_from_json(config::load_file(dir + "/ok.json")).task.group, "A4");
  io::write_file_atomic(dir + "/bad.json", R"({"task": {"group": )");
  EXPECT_NE(error_of([&] { config::load_file(dir + "/bad.json"); }).find("malformed JSON"), std::string::npos);
  EXPECT_NE(error_of([&] { config::load_file(dir + "/none.json"); }).find("cannot open"), std::string::npos);
  io::write_file_atomic(dir + "/list.json", "[1, 2]");
  EXPECT_NE(error_of([&] { config::load_file(dir + "/list.json"); }).find("JSON object"), std::string::npos);
}

TEST(ConfigTest, TableListsEveryKey) {
  const std::string table = config::format_table(to_json(RunConfig{}));
  EXPECT_NE(table.find("model.mixer_type"), std::string::npos);
  EXPECT_NE(table.find("solver.eval_max_iter"), std::string::npos);
  EXPECT_NE(table.find("train.lr"), std::string::npos);
}

}  // namespace
}  // namespace fprnn::testing
