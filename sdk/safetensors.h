// Safetensors reading (memory-mapped) and writing.
//
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
// then the data. Every header is validated before any tensor is touched: offsets inside the file,
// no overlaps, byte length == product(shape) · dtype size. Errors name the file and the tensor.
//
//   IC_ASSIGN_OR_RETURN(auto store, TensorStore::Open("/models/dsv32"));  // one file or sharded index
//   const TensorInfo* t = store->Find("model.embed_tokens.weight");
//   IC_ASSIGN_OR_RETURN(std::vector<float> w, store->ReadF32(*t));
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace ic {

enum class DType { kF32, kF16, kBF16, kF8E4M3, kI32, kI64, kU8, kI8, kBool, kF64 };

std::string_view DTypeName(DType dtype);  // "F32", "BF16", …
size_t DTypeSize(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapping (valid while the store lives)
  size_t nbytes = 0;
  std::string file;               // path of the file holding it
  int64_t numel() const;
};

class SafetensorsFile;

// All tensors of a checkpoint directory: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json`, or a single given .safetensors file.
class TensorStore {
 public:
  static absl::StatusOr<std::unique_ptr<TensorStore>> Open(const std::string& path);
  ~TensorStore();

  const TensorInfo* Find(std::string_view name) const;  // nullptr when absent
  const std::map<std::string, TensorInfo, std::less<>>& tensors() const { return tensors_; }

  // The tensor as F32 (F32/F16/BF16 converted; F8E4M3 dequantised with `<name>_scale_inv` 128×128
  // block scales when that tensor exists). InvalidArgument for other dtypes.
  absl::StatusOr<std::vector<float>> ReadF32(const TensorInfo& tensor) const;
  // The tensor as F64 (F64 exactly; the types ReadF32 reads, widened).
  absl::StatusOr<std::vector<double>> ReadF64(const TensorInfo& tensor) const;
  // The string map of every file's "__metadata__" (later files win on equal keys).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  TensorStore() = default;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorInfo, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;  // F32, BF16 (converted from `data`, round-to-nearest-even) or F64
  std::vector<int64_t> shape;
  std::vector<float> data;       // F32 and BF16
  std::vector<double> data_f64;  // F64 (exact: optimizer state)
};

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// bf16 <-> f32 helpers (round to nearest even).
uint16_t FloatToBf16(float f);
float Bf16ToFloat(uint16_t h);

}  // namespace ic
