// safetensors reader/writer: round trips, the byte layout, and one-line errors for bad files.
#include "testing.h"

#include "fprnn/io/safetensors.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace fprnn::testing {
namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_all(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

TEST(SafetensorsTest, RoundTripAllDtypes) {
  const std::string dir = temp_dir("st");
  std::map<std::string, Tensor> t = {
      {"f64", randn({2, 3}, 1)},
      {"f32", randn({4}, 2, torch::kFloat32)},
      {"bf16", randn({3, 1, 2}, 3, torch::kBFloat16)},
      {"i64", torch::arange(5, torch::kInt64)},
      {"i32", torch::arange(7, torch::kInt32)},
      {"u8", torch::arange(3, torch::kUInt8)},
      {"bool", torch::tensor({true, false, true})},
      {"empty", torch::zeros({0, 4})},
      {"scalar", torch::tensor(3.5, torch::kFloat64)},
      {"noncontig", randn({3, 4}, 4).t()},
  };
  const std::string path = dir + "/a.safetensors";
  io::save_safetensors(path, t, {{"hello", "world"}});
  const io::SafeTensors st = io::load_safetensors(path);
  EXPECT_EQ(st.metadata.at("hello"), "world");
  ASSERT_EQ(st.tensors.size(), t.size());
  for (const auto& [name, value] : t) {
    const Tensor& got = st.at(name);
    EXPECT_EQ(got.scalar_type(), value.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), value.sizes()) << name;
    EXPECT_TRUE(torch::equal(got, value.contiguous())) << name;
  }
}

TEST(SafetensorsTest, ByteLayoutMatchesTheFormat) {
  // 8-byte little-endian header length, JSON header, then raw little-endian data in offset order.
  const std::string path = temp_dir("st") + "/b.safetensors";
  io::save_safetensors(path, {{"x", torch::tensor({1.0f, 2.0f})}});
  const std::string bytes = read_all(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  ASSERT_EQ(bytes.size(), 8 + n + 8);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["x"]["dtype"], "F32");
  EXPECT_EQ(header["x"]["shape"], nlohmann::json::array({2}));
  EXPECT_EQ(header["x"]["data_offsets"], nlohmann::json::array({0, 8}));
  float v[2];
  std::memcpy(v, bytes.data() + 8 + n, 8);
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], 2.0f);
}

TEST(SafetensorsTest, ReadsTheReferenceFixtures) {
  const io::SafeTensors st = io::load_safetensors(fixtures_dir() + "/reference_fprnn/fprnn_h1.safetensors");
  EXPECT_EQ(st.at("input").scalar_type(), torch::kFloat64);
  EXPECT_EQ(st.at("input").sizes(), (std::vector<int64_t>{2, 9, 8}));
  EXPECT_NE(st.metadata.at("config").find("householderproduct"), std::string::npos);
}

void expect_error(const std::string& path, const std::string& needle) {
  try {
    io::load_safetensors(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << "the message should name the file: " << msg;
  }
}

TEST(SafetensorsTest, BadFilesGiveOneClearError) {
  const std::string dir = temp_dir("st");
  expect_error(dir + "/missing.safetensors", "cannot open");
  write_all(dir + "/short", "abc");
  expect_error(dir + "/short", "too short");
  write_all(dir + "/huge_header", std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8) + "{}");
  expect_error(dir + "/huge_header", "header length");
  const std::string good = dir + "/good.safetensors";
  io::save_safetensors(good, {{"x", torch::ones({16})}});
  const std::string bytes = read_all(good);
  write_all(dir + "/truncated", bytes.substr(0, bytes.size() - 10));
  expect_error(dir + "/truncated", "outside the file");
  std::string corrupt = bytes;
  corrupt[9] = '#';
  write_all(dir + "/corrupt", corrupt);
  expect_error(dir + "/corrupt", "corrupt");
}

TEST(SafetensorsTest, WritesAreAtomic) {
  // A failed write (unwritable folder) leaves the existing file untouched and no temporary behind.
  const std::string dir = temp_dir("st");
  const std::string path = dir + "/keep.safetensors";
  io::save_safetensors(path, {{"x", torch::ones({3})}});
  const std::string before = read_all(path);
  EXPECT_THROW(io::save_safetensors(dir + "/no/such/folder/x.safetensors", {{"x", torch::ones({3})}}), c10::Error);
  io::save_safetensors(path, {{"x", torch::zeros({3})}});
  EXPECT_NE(read_all(path), before);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

}  // namespace
}  // namespace fprnn::testing
