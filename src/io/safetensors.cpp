// safetensors reader/writer (see include/fprnn/io/safetensors.h).
#include "fprnn/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unistd.h>

namespace fprnn::io {
namespace {

using Json = nlohmann::json;

struct DtypeInfo {
  const char* name;
  torch::Dtype dtype;
};
const DtypeInfo kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

torch::Dtype dtype_from_name(const std::string& name, const std::string& where) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.dtype;
  TORCH_CHECK(false, where, ": unsupported safetensors dtype '", name, "'");
}

const char* name_from_dtype(torch::Dtype dtype) {
  for (const auto& d : kDtypes)
    if (dtype == d.dtype) return d.name;
  TORCH_CHECK(false, "safetensors: cannot store dtype ", dtype);
}

}  // namespace

const torch::Tensor& SafeTensors::at(const std::string& name) const {
  auto it = tensors.find(name);
  TORCH_CHECK(it != tensors.end(), source, ": no tensor '", name, "'");
  return it->second;
}

SafeTensors load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), path, ": cannot open file (", std::strerror(errno), ")");
  in.seekg(0, std::ios::end);
  const int64_t file_size = in.tellg();
  in.seekg(0);
  TORCH_CHECK(file_size >= 8, path, ": not a safetensors file (", file_size, " bytes, too short)");
  uint64_t header_len = 0;
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  TORCH_CHECK(header_len > 0 && static_cast<int64_t>(header_len) <= file_size - 8, path,
              ": not a safetensors file (header length ", header_len, " does not fit a file of ", file_size,
              " bytes)");
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  TORCH_CHECK(in.good(), path, ": truncated header");
  Json j;
  try {
    j = Json::parse(header);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, path, ": corrupt safetensors header (", e.what(), ")");
  }
  TORCH_CHECK(j.is_object(), path, ": corrupt safetensors header (not a JSON object)");
  const int64_t data_start = 8 + static_cast<int64_t>(header_len);
  const int64_t data_size = file_size - data_start;
  std::string data(static_cast<size_t>(data_size), '\0');
  in.read(data.data(), data_size);
  TORCH_CHECK(in.good() || in.eof(), path, ": read error");

  SafeTensors out;
  out.source = path;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      TORCH_CHECK(it.value().is_object(), path, ": __metadata__ must be an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        TORCH_CHECK(m.value().is_string(), path, ": metadata value of '", m.key(), "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const Json& e = it.value();
    const std::string where = path + ": tensor '" + it.key() + "'";
    TORCH_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"), where,
                " has a malformed entry");
    const torch::Dtype dtype = dtype_from_name(e["dtype"].get<std::string>(), where);
    std::vector<int64_t> shape = e["shape"].get<std::vector<int64_t>>();
    const auto offsets = e["data_offsets"].get<std::vector<int64_t>>();
    TORCH_CHECK(offsets.size() == 2 && offsets[0] >= 0 && offsets[0] <= offsets[1] && offsets[1] <= data_size, where,
                " has data offsets outside the file (truncated or corrupt file)");
    int64_t n = 1;
    for (int64_t s : shape) {
      TORCH_CHECK(s >= 0, where, " has a negative dimension");
      n *= s;
    }
    const int64_t nbytes = n * static_cast<int64_t>(c10::elementSize(dtype));
    TORCH_CHECK(nbytes == offsets[1] - offsets[0], where, " has ", offsets[1] - offsets[0], " bytes, expected ",
                nbytes, " for shape ", c10::IntArrayRef(shape));
    torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    if (nbytes > 0) std::memcpy(t.data_ptr(), data.data() + offsets[0], static_cast<size_t>(nbytes));
    out.tensors.emplace(it.key(), std::move(t));
  }
  return out;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    TORCH_CHECK(f != nullptr, path, ": cannot write (", std::strerror(errno), ")");
    const size_t written = std::fwrite(text.data(), 1, text.size(), f);
    const bool ok = written == text.size() && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
    std::fclose(f);
    if (!ok) {
      std::remove(tmp.c_str());
      TORCH_CHECK(false, path, ": write failed (", std::strerror(errno), ")");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    TORCH_CHECK(false, path, ": cannot rename temporary file (", std::strerror(errno), ")");
  }
}

void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> ordered;
  int64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK(tensor.defined(), "save_safetensors: tensor '", name, "' is undefined");
    torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    const int64_t nbytes = t.numel() * static_cast<int64_t>(t.element_size());
    header[name] = {{"dtype", name_from_dtype(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    ordered.push_back(t);
  }
  std::string head = header.dump();
  while ((8 + head.size()) % 8 != 0) head.push_back(' ');  // align the data section to 8 bytes
  std::string blob;
  blob.reserve(8 + head.size() + static_cast<size_t>(offset));
  uint64_t len = head.size();
  for (int i = 0; i < 8; ++i) blob.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  blob += head;
  for (const auto& t : ordered)
    blob.append(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel() * t.element_size()));
  write_file_atomic(path, blob);
}

}  // namespace fprnn::io
