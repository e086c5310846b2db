// safetensors reader/writer: 8-byte little-endian header length, a JSON header, then raw little-endian data.
// Format: https://huggingface.co/docs/safetensors — dtypes F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

namespace fprnn::io {

struct SafeTensors {
  std::map<std::string, torch::Tensor> tensors;       // CPU, contiguous, owned
  std::map<std::string, std::string> metadata;        // header "__metadata__" (string → string)

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
  // Throws "<path>: no tensor '<name>'" when absent.
  const torch::Tensor& at(const std::string& name) const;
  std::string source;                                 // the file it was read from, for messages
};

// Reads a whole file. Throws a one-line c10::Error for a missing, truncated or malformed file.
SafeTensors load_safetensors(const std::string& path);

// Writes tensors (moved to CPU, made contiguous) atomically: a temporary file in the same folder,
// flushed, then renamed over `path`, so an interrupted write never leaves a half-written file.
void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Writes `text` to `path` atomically (temporary file + rename).
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace fprnn::io
