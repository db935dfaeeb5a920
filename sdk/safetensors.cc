// Safetensors: memory-mapped reading with a fully validated header, F32/BF16/F64 writing.
#include "sdk/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "absl/strings/str_join.h"
#include "sdk/json_text.h"
#include "sdk/status.h"

namespace ic {

using json = nlohmann::json;

namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kF16, "F16", 2}, {DType::kBF16, "BF16", 2}, {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kI32, "I32", 4},   {DType::kI64, "I64", 8}, {DType::kU8, "U8", 1},     {DType::kI8, "I8", 1},
    {DType::kBool, "BOOL", 1}, {DType::kF64, "F64", 8},
};

const DTypeInfo* FindDType(const std::string& name) {
  for (const DTypeInfo& d : kDTypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

std::string ErrnoText() { return std::strerror(errno); }

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const int exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  float value;
  if (exp == 0) {
    value = std::ldexp(static_cast<float>(mant), -24);  // subnormal (or zero)
  } else if (exp == 31) {
    value = mant == 0 ? INFINITY : NAN;
  } else {
    value = std::ldexp(static_cast<float>(mant | 0x400), exp - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  bits |= sign;
  std::memcpy(&value, &bits, 4);
  return value;
}

// OCP FP8 E4M3 ("fn"): bias 7, no infinities, S.1111.111 is NaN.
float E4M3ToFloat(uint8_t v) {
  const bool negative = v & 0x80;
  const int exp = (v >> 3) & 0xf;
  const int mant = v & 0x7;
  float value;
  if (exp == 0xf && mant == 0x7) {
    value = NAN;
  } else if (exp == 0) {
    value = std::ldexp(static_cast<float>(mant), -9);  // mant/8 · 2^-6
  } else {
    value = std::ldexp(static_cast<float>(mant | 0x8), exp - 10);  // (1 + mant/8) · 2^(exp-7)
  }
  return negative ? -value : value;
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  // A validated header bounds the product only when no dimension is 0 ([2^32, 2^32, 0] holds 0 values).
  for (int64_t d : shape) {
    if (d == 0) return 0;
  }
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x0040);  // keep it a (quiet) NaN
  const uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float Bf16ToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// One mapped .safetensors file.
class SafetensorsFile {
 public:
  // Maps `path` and appends its validated tensors to `tensors`.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path,
                                                               std::vector<TensorInfo>* tensors,
                                                               std::map<std::string, std::string>* metadata);
  ~SafetensorsFile() {
    if (map_ != nullptr) munmap(map_, size_);
  }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

 private:
  SafetensorsFile() = default;
  absl::Status ParseHeader(std::vector<TensorInfo>* tensors, std::map<std::string, std::string>* metadata) const;

  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
};

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path, std::vector<TensorInfo>* tensors, std::map<std::string, std::string>* metadata) {
  // O_NONBLOCK: opening a FIFO (or a device) named like a shard must not block; the S_ISREG check below
  // rejects it. It changes nothing for regular files, which are only mmap-ed.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", ErrnoText()));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const std::string err = ErrnoText();
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": fstat failed: ", err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument(path, ": not a regular file");
  }
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->size_ = static_cast<size_t>(st.st_size);
  if (file->size_ < 8) {
    ::close(fd);
    return InvalidArgument(path, ": file is ", file->size_, " bytes, too short for the 8-byte header length");
  }
  void* map = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string err = ErrnoText();
  ::close(fd);
  if (map == MAP_FAILED) return absl::InternalError(absl::StrCat(path, ": mmap failed: ", err));
  file->map_ = map;
  IC_RETURN_IF_ERROR(file->ParseHeader(tensors, metadata));
  return file;
}

absl::Status SafetensorsFile::ParseHeader(std::vector<TensorInfo>* tensors,
                                          std::map<std::string, std::string>* metadata) const {
  const uint8_t* base = static_cast<const uint8_t*>(map_);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];  // little-endian
  if (header_len > size_ - 8) {
    return InvalidArgument(path_, ": header length ", header_len, " is larger than the file (", size_ - 8,
                           " bytes after the 8-byte length)");
  }
  const char* header = reinterpret_cast<const char*>(base + 8);
  json root = json::parse(header, header + header_len, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    std::string why = "malformed JSON";
    try {
      json ignored = json::parse(header, header + header_len);
      (void)ignored;
    } catch (const json::exception& e) {
      why = e.what();
    }
    return InvalidArgument(path_, ": header is not valid JSON: ", why);
  }
  if (!root.is_object()) {
    return InvalidArgument(path_, ": header is a JSON ", root.type_name(), "; expected an object");
  }
  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = size_ - 8 - header_len;

  struct Range {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Range> ranges;
  std::vector<TensorInfo> found;
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {  // string -> string by the format; other values are ignored, not fatal
      if (entry.is_object()) {
        for (const auto& [key, value] : entry.items()) {
          if (value.is_string()) (*metadata)[key] = value.get<std::string>();
        }
      }
      continue;
    }
    auto bad = [&](const auto&... why) { return InvalidArgument(path_, ": tensor \"", name, "\": ", why...); };
    if (!entry.is_object()) return bad("entry is ", JsonForMessage(entry), "; expected an object");
    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string()) return bad("missing or non-string dtype");
    const DTypeInfo* dtype = FindDType(dtype_it->get<std::string>());
    if (dtype == nullptr) {
      std::vector<const char*> names;
      for (const DTypeInfo& d : kDTypes) names.push_back(d.name);
      return bad("dtype \"", dtype_it->get<std::string>(),
                 "\" is not supported; supported: ", absl::StrJoin(names, ", "));
    }
    auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array()) return bad("missing shape (a list of sizes)");
    TensorInfo info;
    info.name = name;
    info.dtype = dtype->dtype;
    info.file = path_;
    unsigned __int128 numel = 1;
    for (const json& d : *shape_it) {
      if (!d.is_number_integer() || (!d.is_number_unsigned() && d.get<int64_t>() < 0)) {
        return bad("shape ", JsonForMessage(*shape_it), " has an entry that is not a non-negative integer");
      }
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(INT64_MAX)) return bad("shape ", JsonForMessage(*shape_it), " is too large");
      info.shape.push_back(static_cast<int64_t>(dim));
      numel *= dim;
      if (numel > (static_cast<unsigned __int128>(1) << 64)) return bad("shape ", JsonForMessage(*shape_it), " is too large");
    }
    auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
      return bad("data_offsets must be [begin, end] with non-negative integers, got ",
                 offsets_it == entry.end() ? std::string("nothing") : JsonForMessage(*offsets_it));
    }
    const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
    const uint64_t end = (*offsets_it)[1].get<uint64_t>();
    if (begin > end) return bad("data_offsets begin ", begin, " is after end ", end);
    if (end > data_size) return bad("data_offsets end ", end, " past the data (", data_size, " bytes)");
    const unsigned __int128 expected = numel * dtype->size;
    if (expected != end - begin) {
      return bad("byte length ", end - begin, " does not match shape ", JsonForMessage(*shape_it), " of ", dtype->name, " (",
                 static_cast<uint64_t>(expected), " bytes)");
    }
    info.data = data + begin;
    info.nbytes = end - begin;
    if (end > begin) ranges.push_back({begin, end, name});
    found.push_back(std::move(info));
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return InvalidArgument(path_, ": tensor \"", ranges[i].name, "\": data_offsets [", ranges[i].begin, ", ",
                             ranges[i].end, ") overlap tensor \"", ranges[i - 1].name, "\" [", ranges[i - 1].begin,
                             ", ", ranges[i - 1].end, ")");
    }
  }
  for (TensorInfo& t : found) tensors->push_back(std::move(t));
  return absl::OkStatus();
}

TensorStore::~TensorStore() = default;

absl::StatusOr<std::unique_ptr<TensorStore>> TensorStore::Open(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));

  std::vector<std::string> files;
  // Tensor -> shard named by the index, checked after the shards are read.
  std::vector<std::pair<std::string, std::string>> index_entries;
  if (S_ISDIR(st.st_mode)) {
    const std::string index_path = path + "/model.safetensors.index.json";
    struct stat index_st;
    if (stat(index_path.c_str(), &index_st) == 0 && !S_ISREG(index_st.st_mode)) {
      return InvalidArgument(index_path, ": not a regular file");  // a directory reads as "", a FIFO blocks
    }
    std::ifstream index_in(index_path, std::ios::binary);
    if (index_in) {
      std::stringstream text;
      text << index_in.rdbuf();
      json index = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
      if (index.is_discarded() || !index.is_object()) return InvalidArgument(index_path, ": not a JSON object");
      auto map_it = index.find("weight_map");
      if (map_it == index.end() || !map_it->is_object()) {
        return InvalidArgument(index_path, ": missing \"weight_map\" object");
      }
      std::set<std::string> shards;
      for (const auto& [tensor, shard] : map_it->items()) {
        if (!shard.is_string()) {
          return InvalidArgument(index_path, ": weight_map[\"", tensor, "\"] is ", JsonForMessage(shard),
                                 "; expected a file name");
        }
        const std::string name = shard.get<std::string>();
        if (name.empty() || name[0] == '/' || name.find("..") != std::string::npos) {
          return InvalidArgument(index_path, ": weight_map[\"", tensor, "\"] names \"", name,
                                 "\"; expected a file inside the directory");
        }
        shards.insert(name);
        index_entries.emplace_back(tensor, path + "/" + name);
      }
      for (const std::string& shard : shards) files.push_back(path + "/" + shard);
    } else if (access((path + "/model.safetensors").c_str(), F_OK) == 0) {
      files.push_back(path + "/model.safetensors");
    } else {
      return absl::NotFoundError(absl::StrCat(path, ": no model.safetensors or model.safetensors.index.json"));
    }
  } else {
    files.push_back(path);
  }

  auto store = std::unique_ptr<TensorStore>(new TensorStore());
  for (const std::string& file : files) {
    std::vector<TensorInfo> tensors;
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> opened = SafetensorsFile::Open(file, &tensors, &store->metadata_);
    if (!opened.ok()) {
      if (absl::IsNotFound(opened.status()) && !index_entries.empty()) {
        return absl::NotFoundError(absl::StrCat(file, ": shard listed in model.safetensors.index.json not found"));
      }
      return opened.status();
    }
    store->files_.push_back(std::move(*opened));
    for (TensorInfo& t : tensors) {
      auto [it, inserted] = store->tensors_.emplace(t.name, t);
      if (!inserted) {
        return InvalidArgument("tensor \"", t.name, "\" appears in both ", it->second.file, " and ", t.file);
      }
    }
  }
  for (const auto& [tensor, file] : index_entries) {
    const TensorInfo* t = store->Find(tensor);
    if (t == nullptr || t->file != file) {
      return InvalidArgument(file, ": tensor \"", tensor, "\" listed in model.safetensors.index.json is not in it");
    }
  }
  return store;
}

const TensorInfo* TensorStore::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::vector<float>> TensorStore::ReadF32(const TensorInfo& t) const {
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<float> out(n);
  switch (t.dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(out.data(), t.data, n * 4);
      return out;
    case DType::kF16:
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);  // the data may be unaligned
        out[i] = t.dtype == DType::kF16 ? HalfToFloat(h) : Bf16ToFloat(h);
      }
      return out;
    case DType::kF8E4M3: {
      for (size_t i = 0; i < n; ++i) out[i] = E4M3ToFloat(t.data[i]);
      const TensorInfo* scale = Find(t.name + "_scale_inv");
      if (scale == nullptr) return out;
      constexpr int64_t kBlock = 128;
      if (t.shape.size() != 2) {
        return InvalidArgument(t.file, ": tensor \"", t.name, "\": block-scaled FP8 needs 2 dimensions, got ",
                               t.shape.size());
      }
      const int64_t rows = t.shape[0], cols = t.shape[1];
      const int64_t srows = (rows + kBlock - 1) / kBlock, scols = (cols + kBlock - 1) / kBlock;
      if (scale->shape != std::vector<int64_t>{srows, scols}) {
        return InvalidArgument(scale->file, ": tensor \"", scale->name, "\": shape [",
                               absl::StrJoin(scale->shape, ", "), "] does not match the 128x128 blocks of \"", t.name,
                               "\" [", srows, ", ", scols, "]");
      }
      IC_ASSIGN_OR_RETURN(std::vector<float> s, ReadF32(*scale));
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) out[r * cols + c] *= s[(r / kBlock) * scols + c / kBlock];
      }
      return out;
    }
    default:
      return InvalidArgument(t.file, ": tensor \"", t.name, "\": dtype ", std::string(DTypeName(t.dtype)),
                             " cannot be read as F32 (F32, F16, BF16, F8_E4M3 only)");
  }
}

absl::StatusOr<std::vector<double>> TensorStore::ReadF64(const TensorInfo& t) const {
  if (t.dtype != DType::kF64) {
    IC_ASSIGN_OR_RETURN(std::vector<float> f, ReadF32(t));
    return std::vector<double>(f.begin(), f.end());
  }
  std::vector<double> out(static_cast<size_t>(t.numel()));
  if (!out.empty()) std::memcpy(out.data(), t.data, out.size() * 8);
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const TensorToWrite& t : tensors) {
    auto bad = [&](const auto&... why) { return InvalidArgument(path, ": tensor \"", t.name, "\": ", why...); };
    if (t.name == "__metadata__") return bad("reserved name");
    if (!names.insert(t.name).second) return bad("written twice");
    if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF64) {
      return bad("dtype ", std::string(DTypeName(t.dtype)), " cannot be written (F32, BF16 or F64 only)");
    }
    if (t.dtype == DType::kF64 && !t.data.empty()) return bad("F64 tensors take their values from data_f64");
    if (t.dtype != DType::kF64 && !t.data_f64.empty()) return bad("data_f64 is only for F64 tensors");
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return bad("negative dimension ", d);
      numel *= d;
    }
    const size_t values = t.dtype == DType::kF64 ? t.data_f64.size() : t.data.size();
    if (static_cast<size_t>(numel) != values) {
      return bad("shape [", absl::StrJoin(t.shape, ", "), "] holds ", numel, " values but data has ", values);
    }
    const uint64_t nbytes = static_cast<uint64_t>(numel) * DTypeSize(t.dtype);
    header[t.name] = {
        {"dtype", std::string(DTypeName(t.dtype))}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned

  // A FIFO (or a device) at `path` would block the open or swallow the data: regular files only.
  struct stat existing;
  if (stat(path.c_str(), &existing) == 0 && !S_ISREG(existing.st_mode)) {
    return InvalidArgument(path, ": exists and is not a regular file");
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const TensorToWrite& t : tensors) {
    if (t.dtype == DType::kF32) {
      out.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size() * 4));
    } else if (t.dtype == DType::kF64) {
      out.write(reinterpret_cast<const char*>(t.data_f64.data()), static_cast<std::streamsize>(t.data_f64.size() * 8));
    } else {
      std::vector<uint16_t> bf16(t.data.size());
      for (size_t i = 0; i < t.data.size(); ++i) bf16[i] = FloatToBf16(t.data[i]);
      out.write(reinterpret_cast<const char*>(bf16.data()), static_cast<std::streamsize>(bf16.size() * 2));
    }
  }
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace ic
