// CPU backend: memory, embedding, norms, RoPE, SwiGLU, copies, cache writes, row gather/scatter.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include <unistd.h>

#include "kernels/cpu/cpu_internal.h"
#include "sdk/status.h"

namespace ic::kernels::cpu {
namespace {

constexpr size_t kAlignment = 64;

absl::Status CheckPtr(const void* p, const char* op, const char* field) {
  if (p == nullptr) return InvalidArgument(op, ": ", field, " is null");
  return absl::OkStatus();
}

absl::Status CheckNonNegative(int64_t v, const char* op, const char* field) {
  if (v < 0) return InvalidArgument(op, ": ", field, " = ", v, " is negative");
  return absl::OkStatus();
}

// Resolves a row stride: 0 means dense (= dim); otherwise it must be ≥ dim.
absl::Status ResolveStride(int stride, int dim, const char* op, const char* field, int* out) {
  if (stride == 0) {
    *out = dim;
    return absl::OkStatus();
  }
  if (stride < dim) return InvalidArgument(op, ": ", field, " = ", stride, " is smaller than the row width ", dim);
  *out = stride;
  return absl::OkStatus();
}

absl::Status CheckNormArgs(const NormArgs& a, const char* op, int* in_stride, int* out_stride) {
  IC_RETURN_IF_ERROR(CheckNonNegative(a.rows, op, "rows"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.dim, op, "dim"));
  if (a.rows == 0) return absl::OkStatus();
  if (a.dim == 0) return InvalidArgument(op, ": dim = 0 with rows = ", a.rows);
  IC_RETURN_IF_ERROR(CheckPtr(a.out, op, "out"));
  IC_RETURN_IF_ERROR(CheckPtr(a.in, op, "in"));
  IC_RETURN_IF_ERROR(CheckPtr(a.weight, op, "weight"));
  if (!(a.eps >= 0.0f) || !std::isfinite(a.eps)) return InvalidArgument(op, ": eps = ", a.eps, " is not a finite value ≥ 0");
  IC_RETURN_IF_ERROR(ResolveStride(a.in_stride, a.dim, op, "in_stride", in_stride));
  IC_RETURN_IF_ERROR(ResolveStride(a.out_stride, a.dim, op, "out_stride", out_stride));
  return absl::OkStatus();
}

}  // namespace

// ---- memory ---------------------------------------------------------------------------------------

absl::StatusOr<void*> CpuBackend::Allocate(size_t bytes) {
  const size_t rounded = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  // Larger than physical memory: refuse up front (aligned_alloc might overcommit, and sanitizers abort).
  static const uint64_t kPhysical = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (rounded < bytes || (kPhysical > 0 && rounded > kPhysical)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cpu Allocate: ", bytes, " bytes exceeds the host's physical memory (", kPhysical, " bytes)"));
  }
  void* p = std::aligned_alloc(kAlignment, rounded);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cpu Allocate: out of host memory allocating ", bytes, " bytes"));
  }
  return p;
}

void CpuBackend::Free(void* ptr) { std::free(ptr); }

absl::StatusOr<int> CpuBackend::TimeMark() {
  marks_.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count());
  return static_cast<int>(marks_.size()) - 1;
}

absl::StatusOr<double> CpuBackend::SecondsBetween(int from, int to) {
  const int n = static_cast<int>(marks_.size());
  if (from < 0 || from >= n || to < 0 || to >= n) {
    return InvalidArgument("SecondsBetween: marks ", from, " and ", to, " are not both issued (", n,
                           " since the last reset)");
  }
  return marks_[to] - marks_[from];
}

absl::StatusOr<MemoryInfo> CpuBackend::GetMemoryInfo() {
  // MemAvailable (what can be allocated without swapping) rather than MemFree (which omits reclaimable
  // page cache); sysconf as the fallback where /proc is missing.
  MemoryInfo info;
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (f != nullptr) {
    char line[256];
    while (std::fgets(line, sizeof line, f) != nullptr) {
      unsigned long long kib = 0;
      if (std::sscanf(line, "MemTotal: %llu kB", &kib) == 1) info.total_bytes = kib * 1024;
      if (std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1) info.free_bytes = kib * 1024;
    }
    std::fclose(f);
  }
  if (info.total_bytes == 0) {
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    info.total_bytes = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * page;
    info.free_bytes = static_cast<uint64_t>(sysconf(_SC_AVPHYS_PAGES)) * page;
  }
  if (info.total_bytes == 0) return absl::UnavailableError("cpu GetMemoryInfo: cannot read the host's memory size");
  info.free_bytes = std::min(info.free_bytes, info.total_bytes);
  return info;
}

absl::Status CpuBackend::CopyToDevice(void* dst, const void* host_src, size_t bytes) {
  return CopyOnDevice(dst, host_src, bytes);
}

absl::Status CpuBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  return CopyOnDevice(host_dst, src, bytes);
}

absl::Status CpuBackend::CopyOnDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  IC_RETURN_IF_ERROR(CheckPtr(dst, "Copy", "dst"));
  IC_RETURN_IF_ERROR(CheckPtr(src, "Copy", "src"));
  std::memmove(dst, src, bytes);
  return absl::OkStatus();
}

absl::Status CpuBackend::Memset(void* dst, int value, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  IC_RETURN_IF_ERROR(CheckPtr(dst, "Memset", "dst"));
  std::memset(dst, value, bytes);
  return absl::OkStatus();
}

// ---- embedding ------------------------------------------------------------------------------------

absl::Status CpuBackend::Embedding(const EmbeddingArgs& a) {
  IC_RETURN_IF_ERROR(CheckNonNegative(a.tokens, "Embedding", "tokens"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.dim, "Embedding", "dim"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.vocab, "Embedding", "vocab"));
  if (a.tokens == 0) return absl::OkStatus();
  IC_RETURN_IF_ERROR(CheckPtr(a.out, "Embedding", "out"));
  IC_RETURN_IF_ERROR(CheckPtr(a.ids, "Embedding", "ids"));
  IC_RETURN_IF_ERROR(CheckPtr(a.table, "Embedding", "table"));
  for (int t = 0; t < a.tokens; ++t) {
    if (a.ids[t] < 0 || a.ids[t] >= a.vocab) {
      return InvalidArgument("Embedding: token id ", a.ids[t], " (ids[", t, "]) out of range for vocab_size ", a.vocab);
    }
  }
  for (int t = 0; t < a.tokens; ++t) {
    std::memcpy(a.out + static_cast<int64_t>(t) * a.dim, a.table + static_cast<int64_t>(a.ids[t]) * a.dim,
                sizeof(float) * a.dim);
  }
  return absl::OkStatus();
}

// ---- norms ----------------------------------------------------------------------------------------

absl::Status CpuBackend::RmsNorm(const NormArgs& a) {
  int in_stride = 0, out_stride = 0;
  IC_RETURN_IF_ERROR(CheckNormArgs(a, "RmsNorm", &in_stride, &out_stride));
  if (a.rows == 0) return absl::OkStatus();
  for (int r = 0; r < a.rows; ++r) {
    const float* x = a.in + static_cast<int64_t>(r) * in_stride;
    float* y = a.out + static_cast<int64_t>(r) * out_stride;
    double ss = 0.0;
    for (int i = 0; i < a.dim; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / a.dim + static_cast<double>(a.eps)));
    for (int i = 0; i < a.dim; ++i) y[i] = a.weight[i] * (x[i] * inv);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::LayerNorm(const NormArgs& a) {
  int in_stride = 0, out_stride = 0;
  IC_RETURN_IF_ERROR(CheckNormArgs(a, "LayerNorm", &in_stride, &out_stride));
  if (a.rows == 0) return absl::OkStatus();
  for (int r = 0; r < a.rows; ++r) {
    const float* x = a.in + static_cast<int64_t>(r) * in_stride;
    float* y = a.out + static_cast<int64_t>(r) * out_stride;
    double mean = 0.0;
    for (int i = 0; i < a.dim; ++i) mean += x[i];
    mean /= a.dim;
    double var = 0.0;
    for (int i = 0; i < a.dim; ++i) var += (x[i] - mean) * (x[i] - mean);
    var /= a.dim;
    const double inv = 1.0 / std::sqrt(var + static_cast<double>(a.eps));
    for (int i = 0; i < a.dim; ++i) {
      const float n = static_cast<float>((x[i] - mean) * inv);
      y[i] = n * a.weight[i] + (a.bias != nullptr ? a.bias[i] : 0.0f);
    }
  }
  return absl::OkStatus();
}

// ---- rope -----------------------------------------------------------------------------------------

absl::Status CpuBackend::Rope(const RopeArgs& a) {
  IC_RETURN_IF_ERROR(CheckNonNegative(a.tokens, "Rope", "tokens"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.heads, "Rope", "heads"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.token_stride, "Rope", "token_stride"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.head_stride, "Rope", "head_stride"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.rot_offset, "Rope", "rot_offset"));
  if (a.tokens == 0 || a.heads == 0) return absl::OkStatus();
  if (a.rot_dim <= 0 || a.rot_dim % 2 != 0) return InvalidArgument("Rope: rot_dim = ", a.rot_dim, " must be positive and even");
  IC_RETURN_IF_ERROR(CheckPtr(a.x, "Rope", "x"));
  IC_RETURN_IF_ERROR(CheckPtr(a.positions, "Rope", "positions"));
  IC_RETURN_IF_ERROR(CheckPtr(a.inv_freq, "Rope", "inv_freq"));
  if (a.heads > 1 && a.head_stride < a.rot_offset + a.rot_dim) {
    return InvalidArgument("Rope: head_stride = ", a.head_stride, " is smaller than rot_offset + rot_dim = ",
                           a.rot_offset + a.rot_dim);
  }
  if (!std::isfinite(a.attention_scaling)) return InvalidArgument("Rope: attention_scaling = ", a.attention_scaling);
  for (int t = 0; t < a.tokens; ++t) {
    if (a.positions[t] < 0) return InvalidArgument("Rope: positions[", t, "] = ", a.positions[t], " is negative");
  }
  const int half = a.rot_dim / 2;
  std::vector<float> cs(2 * half);
  for (int t = 0; t < a.tokens; ++t) {
    const float pos = static_cast<float>(a.positions[t]);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * a.inv_freq[i];  // fp32 product, as HF computes freqs
      cs[2 * i] = static_cast<float>(std::cos(static_cast<double>(angle))) * a.attention_scaling;
      cs[2 * i + 1] = static_cast<float>(std::sin(static_cast<double>(angle))) * a.attention_scaling;
    }
    for (int h = 0; h < a.heads; ++h) {
      float* x = a.x + static_cast<int64_t>(t) * a.token_stride + static_cast<int64_t>(h) * a.head_stride + a.rot_offset;
      for (int i = 0; i < half; ++i) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        float* p0 = a.style == RopeStyle::kInterleaved ? x + 2 * i : x + i;
        float* p1 = a.style == RopeStyle::kInterleaved ? x + 2 * i + 1 : x + i + half;
        const float x0 = *p0, x1 = *p1;
        *p0 = x0 * c - x1 * s;
        *p1 = x1 * c + x0 * s;
      }
    }
  }
  return absl::OkStatus();
}

// ---- SwiGLU ---------------------------------------------------------------------------------------

absl::Status CpuBackend::SiluMul(const SiluMulArgs& a) {
  IC_RETURN_IF_ERROR(CheckNonNegative(a.tokens, "SiluMul", "tokens"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.dim, "SiluMul", "dim"));
  if (a.tokens == 0 || a.dim == 0) return absl::OkStatus();
  IC_RETURN_IF_ERROR(CheckPtr(a.out, "SiluMul", "out"));
  IC_RETURN_IF_ERROR(CheckPtr(a.gate, "SiluMul", "gate"));
  IC_RETURN_IF_ERROR(CheckPtr(a.up, "SiluMul", "up"));
  int gs = 0, us = 0, os = 0;
  IC_RETURN_IF_ERROR(ResolveStride(a.gate_stride, a.dim, "SiluMul", "gate_stride", &gs));
  IC_RETURN_IF_ERROR(ResolveStride(a.up_stride, a.dim, "SiluMul", "up_stride", &us));
  IC_RETURN_IF_ERROR(ResolveStride(a.out_stride, a.dim, "SiluMul", "out_stride", &os));
  internal::ParallelFor(a.tokens, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* g = a.gate + t * gs;
      const float* u = a.up + t * us;
      float* o = a.out + t * os;
      int i = 0;
      for (; i + 4 <= a.dim; i += 4) {
        const internal::V4f gv = internal::Load4(g + i);
        internal::Store4(o + i, gv / (1.0f + internal::Exp4(-gv)) * internal::Load4(u + i));
      }
      for (; i < a.dim; ++i) o[i] = g[i] / (1.0f + internal::ExpScalar(-g[i])) * u[i];
    }
  });
  return absl::OkStatus();
}

// ---- copies ---------------------------------------------------------------------------------------

absl::Status CpuBackend::Copy2D(const Copy2DArgs& a) {
  IC_RETURN_IF_ERROR(CheckNonNegative(a.rows, "Copy2D", "rows"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.cols, "Copy2D", "cols"));
  if (a.rows == 0 || a.cols == 0) return absl::OkStatus();
  IC_RETURN_IF_ERROR(CheckPtr(a.dst, "Copy2D", "dst"));
  IC_RETURN_IF_ERROR(CheckPtr(a.src, "Copy2D", "src"));
  int ds = 0, ss = 0;
  IC_RETURN_IF_ERROR(ResolveStride(a.dst_stride, a.cols, "Copy2D", "dst_stride", &ds));
  IC_RETURN_IF_ERROR(ResolveStride(a.src_stride, a.cols, "Copy2D", "src_stride", &ss));
  for (int r = 0; r < a.rows; ++r) {
    float* d = a.dst + static_cast<int64_t>(r) * ds;
    const float* s = a.src + static_cast<int64_t>(r) * ss;
    if (a.accumulate) {
      for (int c = 0; c < a.cols; ++c) d[c] += s[c];
    } else {
      std::memmove(d, s, sizeof(float) * a.cols);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::CacheWrite(const CacheWriteArgs& a) {
  IC_RETURN_IF_ERROR(CheckNonNegative(a.tokens, "CacheWrite", "tokens"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.dim, "CacheWrite", "dim"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.num_slots, "CacheWrite", "num_slots"));
  if (a.tokens == 0 || a.dim == 0) return absl::OkStatus();
  if ((a.cache != nullptr) + (a.cache_bf16 != nullptr) + (a.cache_fp8 != nullptr) != 1) {
    return InvalidArgument("CacheWrite: exactly one of cache, cache_bf16 and cache_fp8 must be set");
  }
  if ((a.cache_fp8 != nullptr) != (a.scale != nullptr)) {
    return InvalidArgument("CacheWrite: scale goes with cache_fp8 (one F32 scale per slot), and only with it");
  }
  IC_RETURN_IF_ERROR(CheckPtr(a.src, "CacheWrite", "src"));
  IC_RETURN_IF_ERROR(CheckPtr(a.slots, "CacheWrite", "slots"));
  int cs = 0, ss = 0;
  IC_RETURN_IF_ERROR(ResolveStride(a.cache_stride, a.dim, "CacheWrite", "cache_stride", &cs));
  IC_RETURN_IF_ERROR(ResolveStride(a.src_stride, a.dim, "CacheWrite", "src_stride", &ss));
  for (int t = 0; t < a.tokens; ++t) {
    if (a.slots[t] < -1 || a.slots[t] >= a.num_slots) {
      return InvalidArgument("CacheWrite: slots[", t, "] = ", a.slots[t], " out of range for num_slots ", a.num_slots);
    }
  }
  for (int t = 0; t < a.tokens; ++t) {
    if (a.slots[t] < 0) continue;
    if (a.cache_fp8 != nullptr) {  // per-token scale amax / 448, then E4M3 of x / scale
      uint8_t* dst = a.cache_fp8 + static_cast<int64_t>(a.slots[t]) * cs;
      const float* src = a.src + static_cast<int64_t>(t) * ss;
      float amax = 0.0f;
      for (int c = 0; c < a.dim; ++c) amax = std::max(amax, std::fabs(src[c]));
      const float scale = internal::Fp8Scale(amax);
      for (int c = 0; c < a.dim; ++c) dst[c] = internal::FloatToE4m3(src[c] / scale);
      a.scale[a.slots[t]] = scale;
      continue;
    }
    if (a.cache_bf16 != nullptr) {
      uint16_t* dst = a.cache_bf16 + static_cast<int64_t>(a.slots[t]) * cs;
      const float* src = a.src + static_cast<int64_t>(t) * ss;
      for (int c = 0; c < a.dim; ++c) dst[c] = internal::FloatToBf16(src[c]);
      continue;
    }
    std::memmove(a.cache + static_cast<int64_t>(a.slots[t]) * cs, a.src + static_cast<int64_t>(t) * ss,
                 sizeof(float) * a.dim);
  }
  return absl::OkStatus();
}

// ---- rows -----------------------------------------------------------------------------------------

namespace {
absl::Status CheckRowsArgs(const RowsArgs& a, const char* op) {
  IC_RETURN_IF_ERROR(CheckNonNegative(a.count, op, "count"));
  IC_RETURN_IF_ERROR(CheckNonNegative(a.dim, op, "dim"));
  if (a.count == 0 || a.dim == 0) return absl::OkStatus();
  IC_RETURN_IF_ERROR(CheckPtr(a.out, op, "out"));
  IC_RETURN_IF_ERROR(CheckPtr(a.in, op, "in"));
  IC_RETURN_IF_ERROR(CheckPtr(a.rows, op, "rows"));
  for (int i = 0; i < a.count; ++i) {
    if (a.rows[i] < 0) return InvalidArgument(op, ": rows[", i, "] = ", a.rows[i], " is negative");
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status CpuBackend::GatherRows(const RowsArgs& a) {
  IC_RETURN_IF_ERROR(CheckRowsArgs(a, "GatherRows"));
  if (a.count == 0 || a.dim == 0) return absl::OkStatus();
  for (int i = 0; i < a.count; ++i) {
    std::memmove(a.out + static_cast<int64_t>(i) * a.dim, a.in + static_cast<int64_t>(a.rows[i]) * a.dim,
                 sizeof(float) * a.dim);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::ScatterAddRows(const RowsArgs& a) {
  IC_RETURN_IF_ERROR(CheckRowsArgs(a, "ScatterAddRows"));
  if (a.count == 0 || a.dim == 0) return absl::OkStatus();
  for (int i = 0; i < a.count; ++i) {
    const float s = a.scale != nullptr ? a.scale[i] : 1.0f;
    internal::Axpy(a.out + static_cast<int64_t>(a.rows[i]) * a.dim, a.in + static_cast<int64_t>(i) * a.dim, s, a.dim);
  }
  return absl::OkStatus();
}

}  // namespace ic::kernels::cpu
