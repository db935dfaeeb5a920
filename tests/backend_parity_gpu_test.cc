// CPU-vs-CUDA parity: every op of kernels/backend.h on random inputs with odd shapes, run on the CPU
// reference backend and on the CUDA backend, compared
//   * floats: normalised error ‖gpu − cpu‖ / ‖cpu‖ (NaN never passes; outputs are poisoned first so an
//     unwritten element shows up);
//   * Topk on identical scores: identical sorted sets (both implement the DESIGN.md §3 rule exactly);
//   * IndexerTopk: the margin-aware rule of DESIGN.md §3 (tests/index_sets.h), scores in F32 (ε 1e-5);
//   * bad input: both backends return InvalidArgument (the CUDA backend reports cache/table errors at
//     the next Synchronize(), see kernels/cuda/cuda_backend.h).
// Without a visible GPU every test is skipped (GTEST_SKIP), never failed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/index_sets.h"

namespace ic::kernels {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// A tensor held by both backends, with the same contents at upload.
template <typename T>
struct Dual {
  T* c = nullptr;  // CPU backend memory
  T* g = nullptr;  // CUDA backend memory
  size_t n = 0;
};

// ‖a − b‖ / max(‖b‖, 1e-30); +inf when the NaN patterns differ or a is NaN where b is finite.
double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return kInf;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool an = std::isnan(a[i]), bn = std::isnan(b[i]);
    if (an || bn) {
      if (an != bn) return kInf;
      continue;
    }
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      if (a[i] != b[i]) return kInf;
      continue;
    }
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

class BackendParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
#ifdef IC_PARITY_CPU_ONLY  // harness check without a GPU: the CPU backend against itself
    auto gpu = CreateBackend(DeviceKind::kCpu);
#else
    if (CudaDeviceCount() == 0) {
      GTEST_SKIP() << "no CUDA GPU is visible (or this build has no CUDA backend): CPU-vs-CUDA parity "
                      "skipped";
    }
    auto gpu = CreateBackend(DeviceKind::kCuda, 0);
#endif
    auto cpu = CreateBackend(DeviceKind::kCpu);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    cpu_ = std::move(*cpu);
    gpu_ = std::move(*gpu);
    rng_.seed(1234 + ::testing::UnitTest::GetInstance()->random_seed());
  }

  void TearDown() override {
    if (gpu_ != nullptr) {
      EXPECT_TRUE(gpu_->Synchronize().ok());
      for (void* p : gpu_ptrs_) gpu_->Free(p);
    }
    if (cpu_ != nullptr) {
      for (void* p : cpu_ptrs_) cpu_->Free(p);
    }
  }

  template <typename T>
  Dual<T> Put(const std::vector<T>& h) {
    Dual<T> d;
    d.n = h.size();
    const size_t bytes = std::max<size_t>(h.size(), 1) * sizeof(T);
    auto c = cpu_->Allocate(bytes);
    auto g = gpu_->Allocate(bytes);
    EXPECT_TRUE(c.ok() && g.ok());
    d.c = static_cast<T*>(*c);
    d.g = static_cast<T*>(*g);
    cpu_ptrs_.push_back(d.c);
    gpu_ptrs_.push_back(d.g);
    if (!h.empty()) {
      EXPECT_TRUE(cpu_->CopyToDevice(d.c, h.data(), h.size() * sizeof(T)).ok());
      EXPECT_TRUE(gpu_->CopyToDevice(d.g, h.data(), h.size() * sizeof(T)).ok());
    }
    return d;
  }

  // An output buffer poisoned with NaN (floats) or a sentinel (ints).
  Dual<float> Out(size_t n) { return Put(std::vector<float>(n, kNaN)); }
  Dual<int32_t> OutI(size_t n) { return Put(std::vector<int32_t>(n, -7)); }

  template <typename T>
  std::vector<T> Cpu(const Dual<T>& d) {
    std::vector<T> h(d.n);
    EXPECT_TRUE(cpu_->CopyToHost(h.data(), d.c, d.n * sizeof(T)).ok());
    return h;
  }
  template <typename T>
  std::vector<T> Gpu(const Dual<T>& d) {
    std::vector<T> h(d.n);
    const absl::Status s = gpu_->Synchronize();
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_TRUE(gpu_->CopyToHost(h.data(), d.g, d.n * sizeof(T)).ok());
    return h;
  }

  std::vector<float> Randn(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng_);
    return v;
  }
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  void ExpectClose(const Dual<float>& d, double tol, const std::string& what) {
    const std::vector<float> c = Cpu(d), g = Gpu(d);
    const double err = RelErr(g, c);
    EXPECT_LE(err, tol) << what << ": normalised error " << err;
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.3e", err);
    RecordProperty(what, buf);
  }

  std::unique_ptr<Backend> cpu_, gpu_;
  std::vector<void*> cpu_ptrs_, gpu_ptrs_;
  std::mt19937 rng_;
};

// ---- Gemm -----------------------------------------------------------------------------------------

TEST_F(BackendParityTest, Gemm) {
  struct Case {
    int m, n, k, lda, ldb, ldc, batch;
    bool bt;
    float alpha, beta;
  };
  const Case cases[] = {
      {37, 53, 61, 0, 0, 0, 1, true, 1.0f, 0.0f},    {37, 53, 61, 0, 0, 0, 1, false, 1.0f, 0.0f},
      {29, 31, 45, 50, 47, 40, 1, true, 0.5f, 0.7f}, {29, 31, 45, 50, 33, 40, 1, false, -1.5f, 1.0f},
      {1, 257, 129, 0, 0, 0, 1, true, 1.0f, 0.0f},   {257, 129, 511, 0, 0, 0, 1, true, 1.0f, 0.0f},
      {17, 23, 19, 0, 0, 0, 3, true, 1.0f, 0.25f},   {17, 23, 19, 21, 25, 27, 4, false, 2.0f, 0.0f},
      {13, 11, 0, 0, 0, 0, 1, true, 1.0f, 0.5f},
      // Decode-sized m (the CUDA backend's BF16 GEMV path): aligned rows (k % 8 == 0), odd k, strides.
      {3, 300, 256, 0, 0, 0, 1, true, 1.0f, 0.0f},   {8, 77, 2048, 0, 0, 0, 1, true, 1.0f, 0.0f},
      {5, 64, 45, 50, 47, 70, 1, true, 0.5f, 0.7f},  {1, 513, 96, 100, 104, 0, 1, true, 1.0f, 1.0f},
  };
  // F32, then BF16 weights (b_bf16: both backends round A the same way; only summation order differs,
  // so the bound is F32's, loosened for the longer BF16-rounded sums).
  for (const bool bf16 : {false, true}) {
    for (const Case& cs : cases) {
      const int lda = cs.lda ? cs.lda : cs.k, ldb = cs.ldb ? cs.ldb : (cs.bt ? cs.k : cs.n),
                ldc = cs.ldc ? cs.ldc : cs.n;
      const int64_t sa = static_cast<int64_t>(cs.m) * lda + 3,
                    sb = static_cast<int64_t>(cs.bt ? cs.n : cs.k) * ldb + 5,
                    sc = static_cast<int64_t>(cs.m) * ldc + 1;
      auto a = Put(Randn(sa * cs.batch + 8)), c = Put(Randn(sc * cs.batch + 8));
      const std::vector<float> b_host = Randn(sb * cs.batch + 8);
      std::vector<uint16_t> b_bits(b_host.size());
      for (size_t i = 0; i < b_host.size(); ++i) {  // truncation: any bit pattern is a valid BF16 operand
        uint32_t u;
        std::memcpy(&u, &b_host[i], sizeof u);
        b_bits[i] = static_cast<uint16_t>(u >> 16);
      }
      auto b = Put(b_host);
      auto b16 = Put(b_bits);
      GemmArgs g{.m = cs.m, .n = cs.n, .k = cs.k, .lda = cs.lda, .ldb = cs.ldb, .ldc = cs.ldc,
                 .b_transposed = cs.bt, .alpha = cs.alpha, .beta = cs.beta, .batch = cs.batch,
                 .stride_a = cs.batch > 1 ? sa : 0, .stride_b = cs.batch > 1 ? sb : 0,
                 .stride_c = cs.batch > 1 ? sc : 0};
      GemmArgs gc = g, gg = g;
      gc.a = a.c, gc.c = c.c;
      gg.a = a.g, gg.c = c.g;
      if (bf16) {
        gc.b_bf16 = b16.c, gg.b_bf16 = b16.g;
      } else {
        gc.b = b.c, gg.b = b.g;
      }
      ASSERT_TRUE(cpu_->Gemm(gc).ok());
      const absl::Status s = gpu_->Gemm(gg);
      ASSERT_TRUE(s.ok()) << s;
      ExpectClose(c, bf16 ? 2e-5 : 1e-5,
                  std::string(bf16 ? "gemm_bf16_" : "gemm_") + std::to_string(cs.m) + "x" + std::to_string(cs.n) +
                      "x" + std::to_string(cs.k) + (cs.bt ? "_bt" : "_bn") + "_b" + std::to_string(cs.batch));
    }
  }
  // A bad leading dimension is InvalidArgument on both.
  auto a = Put(Randn(100)), c = Put(Randn(100));
  GemmArgs bad{.m = 4, .n = 4, .k = 8, .lda = 5};
  bad.a = a.c, bad.b = a.c, bad.c = c.c;
  EXPECT_EQ(cpu_->Gemm(bad).code(), absl::StatusCode::kInvalidArgument);
  bad.a = a.g, bad.b = a.g, bad.c = c.g;
  EXPECT_EQ(gpu_->Gemm(bad).code(), absl::StatusCode::kInvalidArgument);
}

// Block-scaled FP8 weights (GemmArgs::b_fp8): both backends quantise A identically (power-of-two scales,
// the same E4M3 rounding), so they differ by the FP8 tensor cores' accumulation (~1e-4 relative, measured)
// and summation order. Odd m (the CUDA backend pads rows to 4), k with a partial 128-block, ceil(k/128)
// not a multiple of 4 (the padded scale layout), strides, beta; m ≤ 8 with aligned rows runs the CUDA
// backend's FP8 GEMV, with an unaligned lda cuBLASLt.
TEST_F(BackendParityTest, GemmFp8) {
  struct Case {
    int m, n, k, lda, ldb, ldc;
    float alpha, beta;
  };
  const Case cases[] = {{37, 200, 768, 0, 0, 0, 1.0f, 0.0f},    {64, 256, 2048, 0, 0, 0, 1.0f, 0.0f},
                        {1, 384, 640, 0, 0, 0, 1.0f, 0.0f},     {130, 520, 784, 800, 800, 530, 0.5f, 0.75f},
                        {6, 2048, 1536, 0, 0, 0, 1.0f, 1.0f},   {300, 1000, 144, 0, 0, 0, 2.0f, 0.0f},
                        {3, 256, 784, 786, 0, 0, 1.0f, 0.0f},   {8, 130, 144, 0, 160, 0, 1.0f, 0.5f}};
  std::uniform_int_distribution<int> byte(0, 255);
  for (const Case& cs : cases) {
    const int lda = cs.lda ? cs.lda : cs.k, ldb = cs.ldb ? cs.ldb : cs.k, ldc = cs.ldc ? cs.ldc : cs.n;
    const int scale_ld = Fp8ScaleLd(cs.k), nb = (cs.n + 127) / 128;
    std::vector<uint8_t> w(static_cast<size_t>(cs.n) * ldb);
    for (uint8_t& x : w) {
      do x = static_cast<uint8_t>(byte(rng_));
      while ((x & 0x7f) == 0x7f);  // every byte but the two NaNs
    }
    std::vector<float> scales(static_cast<size_t>(nb) * scale_ld);
    for (float& x : scales) x = std::ldexp(1.0f, Uniform(-12, -6)) * (1.0f + 0.1f * Uniform(0, 9));
    std::vector<float> a_host = Randn(static_cast<size_t>(cs.m) * lda);
    for (int i = 0; i < cs.k; ++i) a_host[i] = 0.0f;  // an all-zero row (scale 1)
    auto a = Put(a_host), c = Put(Randn(static_cast<size_t>(cs.m) * ldc));
    auto wd = Put(w);
    auto sd = Put(scales);
    GemmArgs g{.m = cs.m, .n = cs.n, .k = cs.k, .lda = cs.lda, .ldb = cs.ldb, .ldc = cs.ldc, .alpha = cs.alpha,
               .beta = cs.beta};
    GemmArgs gc = g, gg = g;
    gc.a = a.c, gc.c = c.c, gc.b_fp8 = wd.c, gc.b_scale = sd.c;
    gg.a = a.g, gg.c = c.g, gg.b_fp8 = wd.g, gg.b_scale = sd.g;
    ASSERT_TRUE(cpu_->Gemm(gc).ok());
    const absl::Status st = gpu_->Gemm(gg);
    ASSERT_TRUE(st.ok()) << st;
    ExpectClose(c, 1e-3, "gemm_fp8_" + std::to_string(cs.m) + "x" + std::to_string(cs.n) + "x" + std::to_string(cs.k));
  }
  // Bad input: b_fp8 with b, batch > 1, a missing scale: both backends; k or b_scale_ld outside what
  // cuBLASLt's FP8 takes: the CUDA backend.
  auto a = Put(Randn(64 * 160)), c = Put(Randn(64 * 64));
  auto w = Put(std::vector<uint8_t>(64 * 160, 0x38));
  auto sc = Put(std::vector<float>(8, 1.0f));
  auto expect_bad = [&](GemmArgs g, bool cpu_too, const char* what) {
    GemmArgs gc = g, gg = g;
    gc.a = a.c, gc.c = c.c, gc.b_fp8 = w.c, gc.b_scale = g.b_scale ? sc.c : nullptr, gc.b = g.b ? a.c : nullptr;
    gg.a = a.g, gg.c = c.g, gg.b_fp8 = w.g, gg.b_scale = g.b_scale ? sc.g : nullptr, gg.b = g.b ? a.g : nullptr;
    if (cpu_too) EXPECT_EQ(cpu_->Gemm(gc).code(), absl::StatusCode::kInvalidArgument) << what;
    if (!cpu_too && gpu_->kind() != DeviceKind::kCuda) return;  // the CPU-only harness check
    const absl::Status st = gpu_->Gemm(gg);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << what << ": " << st;
  };
  const float* some = reinterpret_cast<const float*>(1);  // only "set or not" matters below
  expect_bad({.b = some, .b_scale = some, .m = 4, .n = 64, .k = 128}, true, "b and b_fp8");
  expect_bad({.m = 4, .n = 64, .k = 128}, true, "no b_scale");
  expect_bad({.b_scale = some, .m = 4, .n = 64, .k = 128, .b_transposed = false}, true, "not b_transposed");
  expect_bad({.b_scale = some, .m = 4, .n = 64, .k = 120}, false, "k % 16 != 0");
  expect_bad({.b_scale = some, .b_scale_ld = 1, .m = 4, .n = 64, .k = 128}, false, "b_scale_ld 1");
}

// ---- Embedding, norms, RoPE, SiluMul, copies --------------------------------------------------------

TEST_F(BackendParityTest, Embedding) {
  const int tokens = 29, dim = 67, vocab = 101;
  std::vector<int32_t> ids(tokens);
  for (int32_t& id : ids) id = Uniform(0, vocab - 1);
  auto table = Put(Randn(static_cast<size_t>(vocab) * dim));
  auto idd = Put(ids);
  auto out = Out(static_cast<size_t>(tokens) * dim);
  ASSERT_TRUE(cpu_->Embedding({.out = out.c, .table = table.c, .ids = idd.c, .tokens = tokens, .dim = dim, .vocab = vocab}).ok());
  ASSERT_TRUE(gpu_->Embedding({.out = out.g, .table = table.g, .ids = idd.g, .tokens = tokens, .dim = dim, .vocab = vocab}).ok());
  EXPECT_EQ(Cpu(out), Gpu(out));
  ids[7] = vocab;  // out of range
  auto bad = Put(ids);
  EXPECT_EQ(cpu_->Embedding({.out = out.c, .table = table.c, .ids = bad.c, .tokens = tokens, .dim = dim, .vocab = vocab}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->Embedding({.out = out.g, .table = table.g, .ids = bad.g, .tokens = tokens, .dim = dim, .vocab = vocab}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(BackendParityTest, Norms) {
  const int rows = 13, dim = 1001, in_stride = 1010, out_stride = 1003;
  auto in = Put(Randn(static_cast<size_t>(rows) * in_stride, 3.0f));
  auto w = Put(Randn(dim)), b = Put(Randn(dim));
  for (int layer = 0; layer < 3; ++layer) {
    auto out = Out(static_cast<size_t>(rows) * out_stride);
    NormArgs n{.rows = rows, .dim = dim, .in_stride = in_stride, .out_stride = out_stride, .eps = 1e-5f};
    NormArgs nc = n, ng = n;
    nc.out = out.c, nc.in = in.c, nc.weight = w.c, nc.bias = layer == 2 ? b.c : nullptr;
    ng.out = out.g, ng.in = in.g, ng.weight = w.g, ng.bias = layer == 2 ? b.g : nullptr;
    if (layer == 0) {
      ASSERT_TRUE(cpu_->RmsNorm(nc).ok());
      ASSERT_TRUE(gpu_->RmsNorm(ng).ok());
    } else {
      ASSERT_TRUE(cpu_->LayerNorm(nc).ok());
      ASSERT_TRUE(gpu_->LayerNorm(ng).ok());
    }
    // Compare the written columns only (the padding stays NaN on both).
    ExpectClose(out, 1e-5, layer == 0 ? "rmsnorm" : (layer == 1 ? "layernorm" : "layernorm_bias"));
  }
  // In place, dense.
  auto x = Put(Randn(static_cast<size_t>(rows) * dim));
  ASSERT_TRUE(cpu_->RmsNorm({.out = x.c, .in = x.c, .weight = w.c, .rows = rows, .dim = dim}).ok());
  ASSERT_TRUE(gpu_->RmsNorm({.out = x.g, .in = x.g, .weight = w.g, .rows = rows, .dim = dim}).ok());
  ExpectClose(x, 1e-5, "rmsnorm_inplace");
}

TEST_F(BackendParityTest, Rope) {
  const int tokens = 11, heads = 5, head_stride = 40, token_stride = heads * head_stride + 3, rot_offset = 8,
            rot_dim = 24;
  std::vector<int32_t> pos(tokens);
  for (int32_t& p : pos) p = Uniform(0, 5000);
  std::vector<float> inv_freq(rot_dim / 2);
  for (int i = 0; i < rot_dim / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / rot_dim);
  auto pd = Put(pos);
  auto fd = Put(inv_freq);
  for (RopeStyle style : {RopeStyle::kNeox, RopeStyle::kInterleaved}) {
    auto x = Put(Randn(static_cast<size_t>(tokens) * token_stride));
    RopeArgs r{.tokens = tokens, .heads = heads, .token_stride = token_stride, .head_stride = head_stride,
               .rot_offset = rot_offset, .rot_dim = rot_dim, .attention_scaling = 1.25f, .style = style};
    RopeArgs rc = r, rg = r;
    rc.x = x.c, rc.positions = pd.c, rc.inv_freq = fd.c;
    rg.x = x.g, rg.positions = pd.g, rg.inv_freq = fd.g;
    ASSERT_TRUE(cpu_->Rope(rc).ok());
    ASSERT_TRUE(gpu_->Rope(rg).ok());
    ExpectClose(x, 1e-5, style == RopeStyle::kNeox ? "rope_neox" : "rope_interleaved");
  }
}

TEST_F(BackendParityTest, SiluMulAndCopy2D) {
  const int tokens = 19, dim = 333;
  auto gate = Put(Randn(static_cast<size_t>(tokens) * 700, 2.0f)), up = Put(Randn(static_cast<size_t>(tokens) * 350));
  auto out = Out(static_cast<size_t>(tokens) * dim);
  ASSERT_TRUE(cpu_->SiluMul({.out = out.c, .gate = gate.c, .up = up.c, .tokens = tokens, .dim = dim, .gate_stride = 700, .up_stride = 350}).ok());
  ASSERT_TRUE(gpu_->SiluMul({.out = out.g, .gate = gate.g, .up = up.g, .tokens = tokens, .dim = dim, .gate_stride = 700, .up_stride = 350}).ok());
  ExpectClose(out, 1e-6, "silu_mul");
  for (bool acc : {false, true}) {
    auto dst = Put(Randn(static_cast<size_t>(tokens) * 400));
    ASSERT_TRUE(cpu_->Copy2D({.dst = dst.c, .src = gate.c, .rows = tokens, .cols = dim, .dst_stride = 400, .src_stride = 700, .accumulate = acc}).ok());
    ASSERT_TRUE(gpu_->Copy2D({.dst = dst.g, .src = gate.g, .rows = tokens, .cols = dim, .dst_stride = 400, .src_stride = 700, .accumulate = acc}).ok());
    ExpectClose(dst, 1e-7, acc ? "copy2d_acc" : "copy2d");
  }
}

TEST_F(BackendParityTest, CacheWrite) {
  const int tokens = 23, dim = 45, cache_stride = 50, src_stride = 47;
  const int64_t num_slots = 64;
  std::vector<int32_t> slots(num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng_);
  slots.resize(tokens);
  slots[3] = -1;
  auto cache = Put(Randn(num_slots * cache_stride));
  auto src = Put(Randn(static_cast<size_t>(tokens) * src_stride));
  auto sd = Put(slots);
  CacheWriteArgs w{.tokens = tokens, .dim = dim, .cache_stride = cache_stride, .src_stride = src_stride, .num_slots = num_slots};
  CacheWriteArgs wc = w, wg = w;
  wc.cache = cache.c, wc.src = src.c, wc.slots = sd.c;
  wg.cache = cache.g, wg.src = src.g, wg.slots = sd.g;
  ASSERT_TRUE(cpu_->CacheWrite(wc).ok());
  ASSERT_TRUE(gpu_->CacheWrite(wg).ok());
  EXPECT_EQ(Cpu(cache), Gpu(cache));
  // The BF16 cache (index-K of Precision::kBF16): identical bit patterns (round to nearest even),
  // including ±inf, −0 and values that round up into the next binade.
  std::vector<float> special = Randn(static_cast<size_t>(tokens) * src_stride);
  special[0] = kInf, special[1] = -kInf, special[2] = -0.0f, special[4] = 1.00390625f, special[5] = 3.3895314e38f;
  auto src2 = Put(special);
  auto cache16 = Put(std::vector<uint16_t>(num_slots * cache_stride, 0x1234));
  CacheWriteArgs bc = w, bg = w;
  bc.cache_bf16 = cache16.c, bc.src = src2.c, bc.slots = sd.c;
  bg.cache_bf16 = cache16.g, bg.src = src2.g, bg.slots = sd.g;
  ASSERT_TRUE(cpu_->CacheWrite(bc).ok());
  ASSERT_TRUE(gpu_->CacheWrite(bg).ok());
  EXPECT_EQ(Cpu(cache16), Gpu(cache16));
  bc.cache = cache.c;  // both set
  EXPECT_EQ(cpu_->CacheWrite(bc).code(), absl::StatusCode::kInvalidArgument);
  bg.cache = cache.g;
  EXPECT_EQ(gpu_->CacheWrite(bg).code(), absl::StatusCode::kInvalidArgument);
  // The FP8 cache: identical E4M3 bytes and per-slot scales (amax / 448), including an all-zero row (scale
  // 1) and a row with one huge value (its other values underflow to 0 or to subnormals).
  std::vector<float> rows8 = Randn(static_cast<size_t>(tokens) * src_stride);
  for (int c = 0; c < src_stride; ++c) rows8[static_cast<size_t>(7) * src_stride + c] = 0.0f;  // scale 1
  rows8[static_cast<size_t>(9) * src_stride + 3] = 1e30f;  // one huge value: the rest underflow to 0
  auto src8 = Put(rows8);
  auto cache8 = Put(std::vector<uint8_t>(num_slots * cache_stride, 0x55));
  auto scale8 = Put(std::vector<float>(num_slots, -1.0f));
  CacheWriteArgs fc = w, fg = w;
  fc.cache_fp8 = cache8.c, fc.scale = scale8.c, fc.src = src8.c, fc.slots = sd.c;
  fg.cache_fp8 = cache8.g, fg.scale = scale8.g, fg.src = src8.g, fg.slots = sd.g;
  ASSERT_TRUE(cpu_->CacheWrite(fc).ok());
  ASSERT_TRUE(gpu_->CacheWrite(fg).ok());
  EXPECT_EQ(Cpu(cache8), Gpu(cache8));
  EXPECT_EQ(Cpu(scale8), Gpu(scale8));
  fg.scale = nullptr;  // FP8 without its scales
  EXPECT_EQ(gpu_->CacheWrite(fg).code(), absl::StatusCode::kInvalidArgument);
  slots[5] = static_cast<int32_t>(num_slots);
  auto bad = Put(slots);
  wc.slots = bad.c, wg.slots = bad.g;
  EXPECT_EQ(cpu_->CacheWrite(wc).code(), absl::StatusCode::kInvalidArgument);
  absl::Status s = gpu_->CacheWrite(wg);
  if (s.ok()) s = gpu_->Synchronize();  // reported at the next synchronisation
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST_F(BackendParityTest, Hadamard) {
  for (int dim : {1, 2, 64, 128, 1024}) {
    const int rows = 37, stride = dim + 3;
    auto x = Put(Randn(static_cast<size_t>(rows) * stride));
    HadamardArgs hc{.x = x.c, .rows = rows, .dim = dim, .stride = stride}, hg = hc;
    hg.x = x.g;
    ASSERT_TRUE(cpu_->Hadamard(hc).ok());
    ASSERT_TRUE(gpu_->Hadamard(hg).ok());
    EXPECT_EQ(Cpu(x), Gpu(x)) << "dim " << dim;  // the same butterflies in the same order
  }
  HadamardArgs bad{.x = nullptr, .rows = 1, .dim = 48};
  EXPECT_EQ(gpu_->Hadamard(bad).code(), absl::StatusCode::kInvalidArgument);
}

// ---- paged caches: attention and indexer ----------------------------------------------------------

struct Paged {
  int block_size = 0, max_blocks = 0, num_seqs = 0;
  int64_t num_slots = 0;
  std::vector<int32_t> block_tables;
};

Paged MakePaged(const std::vector<int>& lens, int block_size, std::mt19937& rng) {
  Paged p;
  p.block_size = block_size;
  p.num_seqs = static_cast<int>(lens.size());
  int total = 2;
  for (int len : lens) {
    p.max_blocks = std::max(p.max_blocks, (len + block_size - 1) / block_size);
    total += (len + block_size - 1) / block_size;
  }
  p.max_blocks += 1;
  std::vector<int32_t> pool(total);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  p.num_slots = static_cast<int64_t>(total) * block_size;
  p.block_tables.assign(static_cast<size_t>(p.num_seqs) * p.max_blocks, -1);
  int next = 0;
  for (int s = 0; s < p.num_seqs; ++s) {
    for (int b = 0; b < (lens[s] + block_size - 1) / block_size; ++b) p.block_tables[s * p.max_blocks + b] = pool[next++];
  }
  return p;
}

// Query tokens: the last `q_per_seq[s]` positions of each sequence, interleaved across sequences.
struct Queries {
  std::vector<int32_t> seq, pos;
};
Queries MakeQueries(const std::vector<int>& lens, const std::vector<int>& q_per_seq) {
  Queries q;
  for (int i = 0;; ++i) {
    bool any = false;
    for (size_t s = 0; s < lens.size(); ++s) {
      if (i < q_per_seq[s]) {
        q.seq.push_back(static_cast<int32_t>(s));
        q.pos.push_back(lens[s] - q_per_seq[s] + i);
        any = true;
      }
    }
    if (!any) break;
  }
  return q;
}

TEST_F(BackendParityTest, Attention) {
  struct Case {
    int q_heads, kv_heads, qk_dim, v_dim;
    bool alias_v;  // MLA absorbed form: v = first v_dim entries of the latent in k_cache
    int topk_k;    // 0: dense
    std::vector<int> lens = {70, 33, 90};
    std::vector<int> q_per_seq = {70, 1, 17};  // prefill, decode, chunked prefill
    int pad = 3;  // k_stride − kv_heads·qk_dim (a multiple of 4 keeps the rows 16-byte aligned)
  };
  const std::vector<int> long_lens = {700, 333}, few_queries = {2, 1};  // split-K over the keys
  const Case cases[] = {
      {6, 2, 40, 40, false, 0},
      {4, 1, 72, 64, true, 0},
      {6, 2, 40, 40, false, 24},
      {4, 1, 72, 64, true, 37},
      {16, 2, 64, 64, false, 0},
      {16, 1, 72, 64, true, 29},
      {16, 1, 72, 64, true, 300, long_lens, few_queries},
      {6, 2, 40, 40, false, 0, long_lens, few_queries},
      {16, 1, 576, 512, true, 64},   // DeepSeek MLA absorbed dims (register kernel, large variant)
      {4, 2, 200, 600, false, 0},    // beyond the register variants: the generic kernel
      {4, 2, 200, 600, false, 300, long_lens, few_queries},
      // The BF16 tensor-core sparse MLA shapes (latent 512 + 64, ≤ 32 heads): split-K (few tokens), many
      // tokens (no split), 20 heads (the 30B model) and 32 (a full second head tile).
      {20, 1, 576, 512, true, 2048, {3000, 2100}, {40, 3}, 4},
      {20, 1, 576, 512, true, 100, {70, 33, 90}, {70, 1, 17}, 4},
      {32, 1, 576, 512, true, 64, {400}, {300}, 4},
      {128, 1, 576, 512, true, 2048, {2500}, {5}, 4},  // DeepSeek-V3.2's 128 heads: four 32-head blocks
      {64, 1, 576, 512, true, 200, {300, 90}, {280, 2}, 4},  // GLM-5's 64
  };
  for (const Case& cs : cases) {
    const std::vector<int>& lens = cs.lens;
    const std::vector<int>& q_per_seq = cs.q_per_seq;
    Paged pg = MakePaged(lens, 16, rng_);
    Queries qs = MakeQueries(lens, q_per_seq);
    const int tokens = static_cast<int>(qs.seq.size());
    const int k_stride = cs.kv_heads * cs.qk_dim + cs.pad;
    const int v_stride = cs.alias_v ? k_stride : cs.kv_heads * cs.v_dim + 1;
    const std::vector<float> kh = Randn(pg.num_slots * k_stride);
    const std::vector<float> vh = cs.alias_v ? kh : Randn(pg.num_slots * v_stride);
    auto kc = Put(kh);
    auto vc = cs.alias_v ? kc : Put(vh);
    // The same caches in BF16 (round to nearest even), for the BF16-cache variant below.
    auto to_bits = [](const std::vector<float>& v) {
      std::vector<uint16_t> bits(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        uint32_t u;
        std::memcpy(&u, &v[i], sizeof u);
        bits[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // finite inputs
      }
      return bits;
    };
    auto k16 = Put(to_bits(kh));
    auto v16 = cs.alias_v ? k16 : Put(to_bits(vh));
    auto q = Put(Randn(static_cast<size_t>(tokens) * cs.q_heads * cs.qk_dim));
    auto tseq = Put(qs.seq), tpos = Put(qs.pos), bt = Put(pg.block_tables);
    std::vector<int32_t> topk;
    if (cs.topk_k > 0) {
      topk.assign(static_cast<size_t>(tokens) * cs.topk_k, -1);
      for (int t = 0; t < tokens; ++t) {
        std::vector<int32_t> cand(qs.pos[t] + 1);
        std::iota(cand.begin(), cand.end(), 0);
        std::shuffle(cand.begin(), cand.end(), rng_);
        const int n = std::min<int>(cs.topk_k - 2, static_cast<int>(cand.size()));
        for (int i = 0; i < n; ++i) topk[static_cast<size_t>(t) * cs.topk_k + i] = cand[i];
        if (n + 1 < cs.topk_k) topk[static_cast<size_t>(t) * cs.topk_k + n + 1] = qs.pos[t] + 5;  // > pos: ignored
      }
    }
    auto tk = Put(topk);
    auto out = Out(static_cast<size_t>(tokens) * cs.q_heads * cs.v_dim);
    auto lse = Out(static_cast<size_t>(tokens) * cs.q_heads);
    auto probs = Out(static_cast<size_t>(tokens) * std::max(cs.topk_k, 1));
    AttentionArgs a{.k_stride = k_stride, .v_stride = v_stride, .q_heads = cs.q_heads, .kv_heads = cs.kv_heads,
                    .qk_dim = cs.qk_dim, .v_dim = cs.v_dim, .num_slots = pg.num_slots,
                    .scale = 1.0f / std::sqrt(static_cast<float>(cs.qk_dim)), .topk_k = cs.topk_k};
    a.layout = {.tokens = tokens, .num_seqs = pg.num_seqs, .max_blocks_per_seq = pg.max_blocks, .block_size = pg.block_size};
    for (Precision precision : {Precision::kF32, Precision::kBF16}) {
    a.precision = precision;
    const bool bf16 = precision == Precision::kBF16;
    AttentionArgs ac = a, ag = a;
    ac.out = out.c, ac.lse = lse.c, ac.q = q.c, ac.k_cache = kc.c, ac.v_cache = vc.c;
    ac.layout.token_seq = tseq.c, ac.layout.token_pos = tpos.c, ac.layout.block_tables = bt.c;
    ag.out = out.g, ag.lse = lse.g, ag.q = q.g, ag.k_cache = kc.g, ag.v_cache = vc.g;
    ag.layout.token_seq = tseq.g, ag.layout.token_pos = tpos.g, ag.layout.block_tables = bt.g;
    if (cs.topk_k > 0) {
      ac.topk = tk.c, ac.probs = probs.c;
      ag.topk = tk.g, ag.probs = probs.g;
    }
    ASSERT_TRUE(cpu_->Attention(ac).ok());
    const absl::Status s = gpu_->Attention(ag);
    ASSERT_TRUE(s.ok()) << s;
    const std::string name = std::string(cs.topk_k ? "sparse" : "dense") + "_attention_h" + std::to_string(cs.q_heads) +
                             "_kv" + std::to_string(cs.kv_heads) + "_d" + std::to_string(cs.qk_dim) + "_L" +
                             std::to_string(lens.back()) + (bf16 ? "_bf16" : "");
    // BF16: the CPU rounds q, k, v and keeps the probabilities in F32, the tensor-core kernel also rounds
    // the probabilities (DESIGN.md §3's BF16 tolerance); the softmax statistics stay F32 on both.
    ExpectClose(out, bf16 ? 1e-2 : 1e-5, name + "_out");
    // BF16 lse and probs: DESIGN.md §3's BF16 tolerance too. Off the tensor-core path the GPU computes the
    // attention (and so lse) in F32 but the probabilities from BF16-rounded q and k, as the CPU does both:
    // on fresh random inputs that mismatch reaches ~2e-3 (1e-3 failed about one run in ten).
    ExpectClose(lse, bf16 ? 1e-2 : 1e-5, name + "_lse");
    if (cs.topk_k > 0) ExpectClose(probs, bf16 ? 1e-2 : 1e-5, name + "_probs");
    if (!bf16) continue;
    // A BF16 KV cache holds exactly the values the BF16 arithmetic rounds the F32 cache to: the CPU gives
    // bitwise the same outputs, and the GPU (tensor cores or the F32 kernels widening it) matches the CPU.
    const std::vector<float> cpu_out = Cpu(out), cpu_lse = Cpu(lse), cpu_probs = Cpu(probs);
    ac.k_cache = ac.v_cache = ag.k_cache = ag.v_cache = nullptr;
    ac.k_cache_bf16 = k16.c, ac.v_cache_bf16 = v16.c;
    ag.k_cache_bf16 = k16.g, ag.v_cache_bf16 = v16.g;
    ASSERT_TRUE(cpu_->Attention(ac).ok());
    const absl::Status s16 = gpu_->Attention(ag);
    ASSERT_TRUE(s16.ok()) << s16;
    EXPECT_EQ(Cpu(out), cpu_out) << name;
    EXPECT_EQ(Cpu(lse), cpu_lse) << name;
    if (cs.topk_k > 0) EXPECT_EQ(Cpu(probs), cpu_probs) << name;
    ExpectClose(out, 1e-2, name + "_cache16_out");
    ExpectClose(lse, 1e-2, name + "_cache16_lse");
    if (cs.topk_k > 0) ExpectClose(probs, 1e-2, name + "_cache16_probs");
    }
  }
  // A BF16 cache with F32 arithmetic, or half a pair of caches: InvalidArgument on both.
  auto c16 = Put(std::vector<uint16_t>(64));
  AttentionArgs bad{.q_heads = 1, .kv_heads = 1, .qk_dim = 8, .v_dim = 8, .num_slots = 4};
  bad.layout.tokens = 0;
  for (Backend* be : {cpu_.get(), gpu_.get()}) {
    AttentionArgs b = bad;
    b.k_cache_bf16 = b.v_cache_bf16 = be == cpu_.get() ? c16.c : c16.g;
    EXPECT_EQ(be->Attention(b).code(), absl::StatusCode::kInvalidArgument);  // precision kF32
    b.precision = Precision::kBF16;
    b.v_cache_bf16 = nullptr;
    EXPECT_EQ(be->Attention(b).code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(BackendParityTest, IndexerTopk) {
  struct Case {
    int heads, head_dim, k;
    std::vector<int> lens, q_per_seq;
  };
  const Case cases[] = {
      {8, 32, 16, {70, 33, 190}, {70, 1, 45}},
      {5, 24, 64, {130, 300}, {130, 3}},
      {64, 128, 2048, {2500, 5000}, {3, 2}},  // DeepSeek-V3.2 sizes, k = 2048, decode rows
      {32, 64, 128, {400, 777}, {50, 3}},
      {16, 36, 32, {150}, {150}},
      {32, 128, 2048, {40000, 33000}, {2, 1}},  // decode rows ≥ 32K keys: the multi-block top-k
      // Tensor-core shapes in BF16 (8/16/32/64 heads × 64/128): prefill tiles of 8 queries, including a
      // block that straddles two sequences (37 + 5 rows), and decode rows.
      {32, 128, 256, {3000, 900}, {37, 5}},
      {64, 128, 512, {2100}, {20}},
      {8, 64, 16, {300, 41}, {29, 41}},
      {16, 64, 100, {1000}, {3}},
  };
  for (const Case& cs : cases) {
    Paged pg = MakePaged(cs.lens, 64, rng_);
    Queries qs = MakeQueries(cs.lens, cs.q_per_seq);
    const int tokens = static_cast<int>(qs.seq.size());
    const int k_stride = cs.head_dim + 8;  // a multiple of 8 when head_dim is (the BF16 tensor-core path)
    const int scores_stride = *std::max_element(cs.lens.begin(), cs.lens.end()) + 7;
    auto kc = Put(Randn(pg.num_slots * k_stride));
    auto q = Put(Randn(static_cast<size_t>(tokens) * cs.heads * cs.head_dim));
    // Positive head weights keep the k-th score away from 0, where a relative margin would be vacuous.
    std::vector<float> wh = Randn(static_cast<size_t>(tokens) * cs.heads, 1.0f / std::sqrt(static_cast<float>(cs.heads * cs.head_dim)));
    for (float& x : wh) x = std::fabs(x);
    auto w = Put(wh);
    auto tseq = Put(qs.seq), tpos = Put(qs.pos), bt = Put(pg.block_tables);
    IndexerArgs a{.scores_stride = scores_stride, .k_stride = k_stride, .num_slots = pg.num_slots, .heads = cs.heads,
                  .head_dim = cs.head_dim, .k = cs.k};
    a.layout = {.tokens = tokens, .num_seqs = pg.num_seqs, .max_blocks_per_seq = pg.max_blocks, .block_size = pg.block_size};
    // The same keys as a BF16 index-K cache (written by the CPU backend's CacheWrite).
    std::vector<int32_t> all_slots(pg.num_slots);
    std::iota(all_slots.begin(), all_slots.end(), 0);
    auto slots_d = Put(all_slots);
    auto kc16 = Put(std::vector<uint16_t>(pg.num_slots * k_stride, 0));
    ASSERT_TRUE(cpu_->CacheWrite({.cache_bf16 = kc16.c, .src = kc.c, .slots = slots_d.c,
                                  .tokens = static_cast<int>(pg.num_slots), .dim = k_stride,
                                  .num_slots = pg.num_slots}).ok());
    kc16 = Put(Cpu(kc16));
    // And as an FP8 cache (rows padded to a multiple of 16 bytes, as the FP8 kernel needs).
    const int k_stride8 = (cs.head_dim + 15) / 16 * 16;
    auto kc8 = Put(std::vector<uint8_t>(pg.num_slots * k_stride8, 0));
    auto ks8 = Put(std::vector<float>(pg.num_slots, 0.0f));
    ASSERT_TRUE(cpu_->CacheWrite({.cache_fp8 = kc8.c, .scale = ks8.c, .src = kc.c, .slots = slots_d.c,
                                  .tokens = static_cast<int>(pg.num_slots), .dim = cs.head_dim,
                                  .cache_stride = k_stride8, .src_stride = k_stride, .num_slots = pg.num_slots})
                    .ok());
    kc8 = Put(Cpu(kc8));
    ks8 = Put(Cpu(ks8));
    const bool fp8_shape = (cs.heads == 8 || cs.heads == 16 || cs.heads == 32 || cs.heads == 64) &&
                           (cs.head_dim == 64 || cs.head_dim == 128);
    // 0: F32; 1: BF16 arithmetic on the F32 cache; 2: BF16 arithmetic on the BF16 cache; 3: FP8.
    for (int mode = 0; mode < 4; ++mode)
    for (int variant = 0; variant < 3; ++variant) {
      // 0: with scores; 1: fused (no scores); 2: fused on a backend forced to 1-3-row query tiles.
      const bool with_scores = variant == 0;
      const Precision precision =
          mode == 0 ? Precision::kF32 : mode == 3 ? Precision::kFP8 : Precision::kBF16;
      a.precision = precision;
      Backend* gpu = gpu_.get();
      std::unique_ptr<Backend> tiny_tiles;
#ifndef IC_PARITY_CPU_ONLY
      if (variant == 2) {
        const std::string bytes = std::to_string(sizeof(float) * pg.max_blocks * pg.block_size * (1 + cs.k % 3));
        setenv("IC_CUDA_INDEXER_TILE_BYTES", bytes.c_str(), 1);
        auto b = CreateBackend(DeviceKind::kCuda, 0);
        unsetenv("IC_CUDA_INDEXER_TILE_BYTES");
        ASSERT_TRUE(b.ok()) << b.status();
        tiny_tiles = std::move(*b);
        gpu = tiny_tiles.get();
      }
#endif
      auto idx = OutI(static_cast<size_t>(tokens) * cs.k);
      auto scores = Out(static_cast<size_t>(tokens) * scores_stride);
      IndexerArgs ac = a, ag = a;
      ac.indices = idx.c, ac.q = q.c, ac.w = w.c, ac.k_cache = kc.c;
      ac.layout.token_seq = tseq.c, ac.layout.token_pos = tpos.c, ac.layout.block_tables = bt.c;
      ag.indices = idx.g, ag.q = q.g, ag.w = w.g, ag.k_cache = kc.g;
      if (mode == 2) {
        ac.k_cache = nullptr, ag.k_cache = nullptr;
        ac.k_cache_bf16 = kc16.c, ag.k_cache_bf16 = kc16.g;
      }
      if (mode == 3) {
        ac.k_cache = nullptr, ag.k_cache = nullptr;
        ac.k_cache_fp8 = kc8.c, ag.k_cache_fp8 = kc8.g;
        ac.k_scale = ks8.c, ag.k_scale = ks8.g;
        ac.k_stride = ag.k_stride = k_stride8;
      }
      ag.layout.token_seq = tseq.g, ag.layout.token_pos = tpos.g, ag.layout.block_tables = bt.g;
      // The CPU run always produces the reference scores (the margin rule needs them).
      ac.scores = scores.c;
      if (with_scores) ag.scores = scores.g;
      ASSERT_TRUE(cpu_->IndexerTopk(ac).ok());
      absl::Status s = gpu->IndexerTopk(ag);
#ifndef IC_PARITY_CPU_ONLY
      if (mode == 3 && !fp8_shape) {  // the CUDA FP8 kernel's shapes only: a clear error otherwise
        EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
        EXPECT_NE(s.message().find("supports 8, 16, 32 or 64 heads"), std::string::npos) << s;
        continue;
      }
#endif
      if (s.ok()) s = gpu->Synchronize();
      ASSERT_TRUE(s.ok()) << s;
      const std::string name = "indexer_h" + std::to_string(cs.heads) + "_d" + std::to_string(cs.head_dim) + "_k" +
                               std::to_string(cs.k) +
                               (mode == 0 ? "_f32" : mode == 1 ? "_bf16" : mode == 2 ? "_bf16cache" : "_fp8") +
                               (with_scores ? "_scores" : (variant == 1 ? "_fused" : "_fused_small_tiles"));
      // FP8: the tensor cores accumulate E4M3 products with fewer bits than F32 (~1e-4 relative), so
      // scores within 1e-3 and index sets margin-equal at the BF16 ε (DESIGN.md §3).
      if (with_scores) ExpectClose(scores, mode == 3 ? 1e-3 : 1e-5, name);
      const std::vector<int32_t> ic = Cpu(idx), ig = Gpu(idx);
      const std::vector<float> ref = Cpu(scores);
      std::vector<int32_t> valid(tokens);
      for (int t = 0; t < tokens; ++t) valid[t] = qs.pos[t] + 1;
      EXPECT_TRUE(test::IndexSetsWellFormed(ig.data(), tokens, cs.k, valid.data())) << name;
      EXPECT_TRUE(test::IndexSetsMarginEqual(ic.data(), ig.data(), tokens, cs.k, ref.data(), scores_stride, valid.data(),
                                             mode == 3 ? 1e-2f : 1e-5f))
          << name;
      int exact_rows = 0;
      for (int t = 0; t < tokens; ++t) {
        exact_rows += test::SortedValid(ic.data() + static_cast<size_t>(t) * cs.k, cs.k) ==
                      test::SortedValid(ig.data() + static_cast<size_t>(t) * cs.k, cs.k);
      }
      RecordProperty(name + "_identical_rows", std::to_string(exact_rows) + "/" + std::to_string(tokens));
    }
  }
}

// ---- Topk on identical scores: identical sets ------------------------------------------------------

TEST_F(BackendParityTest, TopkIdenticalScores) {
  // stride 3001: one block per row; 40961 (≥ 32K, ≤ 64 rows): rows split over several blocks.
  const int rows = 9;
  for (int stride : {3001, 40961})
  for (int k : {1, 7, 100, 2048}) {
    std::vector<float> scores(static_cast<size_t>(rows) * stride);
    for (float& s : scores) s = static_cast<float>(Uniform(-20, 20)) * 0.25f;  // many ties
    for (int i = 0; i < 40; ++i) {
      const float special[] = {kInf, -kInf, kNaN, -0.0f, 0.0f};
      scores[Uniform(0, rows * stride - 1)] = special[Uniform(0, 4)];
    }
    std::vector<int32_t> lengths(rows);
    for (int r = 0; r < rows; ++r) lengths[r] = r == 0 ? 0 : (r == 1 ? std::min(k, stride) : Uniform(1, stride));
    auto sd = Put(scores);
    auto ld = Put(lengths);
    auto out = OutI(static_cast<size_t>(rows) * k);
    ASSERT_TRUE(cpu_->Topk({.out = out.c, .scores = sd.c, .lengths = ld.c, .rows = rows, .stride = stride, .k = k}).ok());
    ASSERT_TRUE(gpu_->Topk({.out = out.g, .scores = sd.g, .lengths = ld.g, .rows = rows, .stride = stride, .k = k}).ok());
    const std::vector<int32_t> c = Cpu(out), g = Gpu(out);
    EXPECT_TRUE(test::IndexSetsWellFormed(g.data(), rows, k, lengths.data())) << "k = " << k;
    for (int r = 0; r < rows; ++r) {
      EXPECT_EQ(test::SortedValid(c.data() + static_cast<size_t>(r) * k, k),
                test::SortedValid(g.data() + static_cast<size_t>(r) * k, k))
          << "k = " << k << ", row " << r << ", length " << lengths[r] << ", stride " << stride;
    }
  }
}

// ---- MoE -------------------------------------------------------------------------------------------

TEST_F(BackendParityTest, MoeRoute) {
  struct Case {
    int experts, n_group, topk_group, top_k;
    bool norm, bias;
  };
  const Case cases[] = {{64, 8, 3, 6, true, true}, {256, 8, 4, 8, true, true}, {40, 1, 1, 5, false, false}};
  for (const Case& cs : cases) {
    const int tokens = 37;
    auto logits = Put(Randn(static_cast<size_t>(tokens) * cs.experts, 2.0f));
    auto bias = Put(Randn(cs.experts, 0.1f));
    auto ids = OutI(static_cast<size_t>(tokens) * cs.top_k);
    auto wts = Out(static_cast<size_t>(tokens) * cs.top_k);
    MoeRouteArgs m{.tokens = tokens, .experts = cs.experts, .top_k = cs.top_k, .n_group = cs.n_group,
                   .topk_group = cs.topk_group, .norm_topk_prob = cs.norm, .routed_scaling_factor = 2.5f};
    MoeRouteArgs mc = m, mg = m;
    mc.expert_ids = ids.c, mc.expert_weights = wts.c, mc.logits = logits.c, mc.bias = cs.bias ? bias.c : nullptr;
    mg.expert_ids = ids.g, mg.expert_weights = wts.g, mg.logits = logits.g, mg.bias = cs.bias ? bias.g : nullptr;
    ASSERT_TRUE(cpu_->MoeRoute(mc).ok());
    ASSERT_TRUE(gpu_->MoeRoute(mg).ok());
    EXPECT_EQ(Cpu(ids), Gpu(ids)) << "experts " << cs.experts;
    ExpectClose(wts, 1e-6, "moe_route_e" + std::to_string(cs.experts));
  }
}

TEST_F(BackendParityTest, GatherScatterRows) {
  const int count = 41, dim = 77, in_rows = 29;
  std::vector<int32_t> rows(count);
  for (int32_t& r : rows) r = Uniform(0, in_rows - 1);  // duplicates included
  auto rd = Put(rows);
  auto table = Put(Randn(static_cast<size_t>(in_rows) * dim));
  auto gathered = Out(static_cast<size_t>(count) * dim);
  ASSERT_TRUE(cpu_->GatherRows({.out = gathered.c, .in = table.c, .rows = rd.c, .count = count, .dim = dim}).ok());
  ASSERT_TRUE(gpu_->GatherRows({.out = gathered.g, .in = table.g, .rows = rd.g, .count = count, .dim = dim}).ok());
  EXPECT_EQ(Cpu(gathered), Gpu(gathered));
  auto scale = Put(Randn(count));
  auto src = Put(Randn(static_cast<size_t>(count) * dim));
  for (bool with_scale : {true, false}) {
    auto acc = Put(Randn(static_cast<size_t>(in_rows) * dim));
    RowsArgs s{.count = count, .dim = dim};
    RowsArgs sc = s, sg = s;
    sc.out = acc.c, sc.in = src.c, sc.rows = rd.c, sc.scale = with_scale ? scale.c : nullptr;
    sg.out = acc.g, sg.in = src.g, sg.rows = rd.g, sg.scale = with_scale ? scale.g : nullptr;
    ASSERT_TRUE(cpu_->ScatterAddRows(sc).ok());
    ASSERT_TRUE(gpu_->ScatterAddRows(sg).ok());
    ExpectClose(acc, 1e-6, with_scale ? "scatter_add_scaled" : "scatter_add");
  }
}

// Fused routed experts (decode): F32 and BF16 weights, a row length that takes the scalar path (200) and
// ones that take the 16-byte path (256, 136), random routing with repeats, a shared expert in the second
// case; then a bad expert id.
TEST_F(BackendParityTest, MoeExperts) {
  struct Case {
    int tokens, top_k, experts, hidden, inter;
  };
  // F32, BF16, then block-scaled FP8 weights (hidden and inter multiples of 16; a partial 128-block).
  const std::vector<Case> wide = {Case{3, 2, 5, 200, 72}, Case{4, 4, 8, 256, 136}, Case{1, 8, 16, 128, 64}};
  const std::vector<Case> fp8_cases = {Case{3, 2, 5, 208, 80}, Case{4, 4, 8, 256, 144}, Case{1, 8, 16, 128, 64}};
  for (const int precision : {0, 1, 2}) {
    const bool bf16 = precision == 1, fp8 = precision == 2;
    for (const Case& cs : fp8 ? fp8_cases : wide) {
      std::vector<Dual<float>> f32_w, scales;
      std::vector<Dual<uint16_t>> bf16_w;
      std::vector<Dual<uint8_t>> fp8_w;
      std::vector<const void*> cpu_table, gpu_table, cpu_scales, gpu_scales;
      const bool with_shared = cs.hidden == 256;
      const int E = cs.experts;
      for (int m = 0; m < 3 * E + (with_shared ? 3 : 0); ++m) {  // the last three: the shared expert
        const std::vector<float> w = Randn(static_cast<size_t>(cs.hidden) * cs.inter, 0.1f);
        if (fp8) {
          const bool down = m < 3 * E ? m >= 2 * E : m == 3 * E + 2;
          const int rows = down ? cs.hidden : cs.inter, cols = down ? cs.inter : cs.hidden;
          std::vector<uint8_t> bytes(w.size());
          for (uint8_t& b : bytes) {
            do b = static_cast<uint8_t>(Uniform(0, 255));
            while ((b & 0x7f) == 0x7f);
          }
          const int scale_ld = Fp8ScaleLd(cols);
          std::vector<float> sc(static_cast<size_t>((rows + 127) / 128) * scale_ld);
          for (float& v : sc) v = std::ldexp(1.0f, Uniform(-12, -8)) * (1.0f + 0.1f * Uniform(0, 9));
          fp8_w.push_back(Put(bytes));
          scales.push_back(Put(sc));
          cpu_table.push_back(fp8_w.back().c), gpu_table.push_back(fp8_w.back().g);
          cpu_scales.push_back(scales.back().c), gpu_scales.push_back(scales.back().g);
        } else if (bf16) {
          std::vector<uint16_t> bits(w.size());
          for (size_t i = 0; i < w.size(); ++i) {
            uint32_t u;
            std::memcpy(&u, &w[i], sizeof u);
            bits[i] = static_cast<uint16_t>(u >> 16);
          }
          bf16_w.push_back(Put(bits));
          cpu_table.push_back(bf16_w.back().c);
          gpu_table.push_back(bf16_w.back().g);
        } else {
          f32_w.push_back(Put(w));
          cpu_table.push_back(f32_w.back().c);
          gpu_table.push_back(f32_w.back().g);
        }
      }
      std::vector<const void*> cpu_list(cpu_table.begin(), cpu_table.begin() + 3 * E),
          gpu_list(gpu_table.begin(), gpu_table.begin() + 3 * E);
      if (fp8) {  // FP8: the 3·E scales follow the 3·E matrices
        cpu_list.insert(cpu_list.end(), cpu_scales.begin(), cpu_scales.begin() + 3 * E);
        gpu_list.insert(gpu_list.end(), gpu_scales.begin(), gpu_scales.begin() + 3 * E);
      }
      auto ct = Put(cpu_list), gt = Put(gpu_list);
      std::vector<int32_t> ids(static_cast<size_t>(cs.tokens) * cs.top_k);
      for (int32_t& e : ids) e = Uniform(0, cs.experts - 1);
      auto id = Put(ids);
      auto wts = Put(Randn(ids.size()));
      auto x = Put(Randn(static_cast<size_t>(cs.tokens) * cs.hidden));
      auto out = Put(Randn(static_cast<size_t>(cs.tokens) * cs.hidden));
      MoeExpertsArgs a{.bf16 = bf16, .tokens = cs.tokens, .hidden = cs.hidden, .inter = cs.inter,
                       .top_k = cs.top_k, .experts = cs.experts, .fp8 = fp8};
      MoeExpertsArgs ac = a, ag = a;
      ac.out = out.c, ac.x = x.c, ac.expert_ids = id.c, ac.expert_weights = wts.c, ac.weights = ct.c;
      ag.out = out.g, ag.x = x.g, ag.expert_ids = id.g, ag.expert_weights = wts.g, ag.weights = gt.g;
      if (with_shared) {
        const int s0 = 3 * cs.experts;
        ac.shared_gate = cpu_table[s0], ac.shared_up = cpu_table[s0 + 1], ac.shared_down = cpu_table[s0 + 2];
        ag.shared_gate = gpu_table[s0], ag.shared_up = gpu_table[s0 + 1], ag.shared_down = gpu_table[s0 + 2];
        if (fp8) {
          auto f = [](const void* p) { return static_cast<const float*>(p); };
          ac.shared_gate_scale = f(cpu_scales[s0]), ac.shared_up_scale = f(cpu_scales[s0 + 1]);
          ac.shared_down_scale = f(cpu_scales[s0 + 2]);
          ag.shared_gate_scale = f(gpu_scales[s0]), ag.shared_up_scale = f(gpu_scales[s0 + 1]);
          ag.shared_down_scale = f(gpu_scales[s0 + 2]);
        }
      }
      ASSERT_TRUE(cpu_->MoeExperts(ac).ok());
      const absl::Status st = gpu_->MoeExperts(ag);
      ASSERT_TRUE(st.ok()) << st;
      // FP8: identical quantisation of x on both; the SiLU products can differ by a rounding and then land
      // on the other side of an E4M3 step, hence the looser bound.
      ExpectClose(out, fp8 ? 5e-3 : bf16 ? 5e-4 : 1e-5,
                  std::string(fp8 ? "moe_experts_fp8_h" : bf16 ? "moe_experts_bf16_h" : "moe_experts_h") +
                      std::to_string(cs.hidden));
    }
  }
  // A bad expert id: InvalidArgument on both (CUDA at the next Synchronize), naming the id.
  std::vector<float> w = Randn(64);
  auto m = Put(w);
  auto ct = Put(std::vector<const void*>(3, m.c)), gt = Put(std::vector<const void*>(3, m.g));
  auto id = Put(std::vector<int32_t>{3});
  auto wts = Put(std::vector<float>{1.0f});
  auto x = Put(Randn(8)), out = Put(Randn(8));
  MoeExpertsArgs bad{.tokens = 1, .hidden = 8, .inter = 8, .top_k = 1, .experts = 1};
  MoeExpertsArgs bc = bad, bg = bad;
  bc.out = out.c, bc.x = x.c, bc.expert_ids = id.c, bc.expert_weights = wts.c, bc.weights = ct.c;
  bg.out = out.g, bg.x = x.g, bg.expert_ids = id.g, bg.expert_weights = wts.g, bg.weights = gt.g;
  EXPECT_EQ(cpu_->MoeExperts(bc).code(), absl::StatusCode::kInvalidArgument);
  absl::Status sync = gpu_->MoeExperts(bg);
  if (sync.ok()) sync = gpu_->Synchronize();
  EXPECT_EQ(sync.code(), absl::StatusCode::kInvalidArgument) << sync;
  EXPECT_NE(sync.message().find("= 3"), std::string::npos) << sync;
  EXPECT_EQ(Cpu(out), Gpu(out));  // both left the token's output as it was
}

// Time marks around queued work: a 1024³ F32 GEMM between two marks takes more than zero device time and
// no more than the host's wall time around it (queue + Synchronize); marks are reusable after a reset.
TEST_F(BackendParityTest, TimeMarks) {
  const int n = 1024;
  auto a = Put(Randn(static_cast<size_t>(n) * n)), c = Out(static_cast<size_t>(n) * n);
  GemmArgs g{.c = c.g, .a = a.g, .b = a.g, .m = n, .n = n, .k = n};
  ASSERT_TRUE(gpu_->Gemm(g).ok());  // plan the shape first
  ASSERT_TRUE(gpu_->Synchronize().ok());
  for (int round = 0; round < 2; ++round) {
    gpu_->ResetTimeMarks();
    const auto t0 = std::chrono::steady_clock::now();
    auto m0 = gpu_->TimeMark();
    ASSERT_TRUE(gpu_->Gemm(g).ok());
    auto m1 = gpu_->TimeMark();
    ASSERT_TRUE(m0.ok() && m1.ok());
    EXPECT_EQ(*m0, 0);
    EXPECT_EQ(*m1, 1);
    auto dt = gpu_->SecondsBetween(*m0, *m1);
    ASSERT_TRUE(gpu_->Synchronize().ok());
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(dt.ok()) << dt.status();
    EXPECT_GT(*dt, 0.0);
    EXPECT_LE(*dt, wall + 1e-4);
  }
  EXPECT_EQ(gpu_->SecondsBetween(0, 5).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BackendParityTest, CrossEntropy) {
  const int tokens = 17, vocab = 5003, stride = 5010;
  std::vector<int32_t> targets(tokens);
  for (int32_t& t : targets) t = Uniform(0, vocab - 1);
  targets[4] = -1;
  auto logits = Put(Randn(static_cast<size_t>(tokens) * stride, 4.0f));
  auto td = Put(targets);
  auto loss = Out(tokens);
  ASSERT_TRUE(cpu_->CrossEntropy({.loss = loss.c, .logits = logits.c, .targets = td.c, .tokens = tokens, .vocab = vocab, .stride = stride}).ok());
  ASSERT_TRUE(gpu_->CrossEntropy({.loss = loss.g, .logits = logits.g, .targets = td.g, .tokens = tokens, .vocab = vocab, .stride = stride}).ok());
  ExpectClose(loss, 1e-5, "cross_entropy");
  targets[2] = vocab;
  auto bad = Put(targets);
  EXPECT_EQ(cpu_->CrossEntropy({.loss = loss.c, .logits = logits.c, .targets = bad.c, .tokens = tokens, .vocab = vocab, .stride = stride}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->CrossEntropy({.loss = loss.g, .logits = logits.g, .targets = bad.g, .tokens = tokens, .vocab = vocab, .stride = stride}).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- indexer distillation -------------------------------------------------------------------------

TEST_F(BackendParityTest, IndexerDistill) {
  struct Shape {
    int T, H, d;
  };
  // Odd sizes; d past one 64-wide staging chunk; T·H large enough that grad_k runs in several head groups.
  for (const Shape& sh : {Shape{1, 1, 1}, Shape{77, 3, 40}, Shape{129, 5, 130}, Shape{40, 2, 512},
                          Shape{700, 4, 64}, Shape{1100, 9, 32}}) {
    const int T = sh.T, H = sh.H, d = sh.d;
    const std::string what = "T" + std::to_string(T) + " H" + std::to_string(H) + " d" + std::to_string(d);
    // Target rows: a random distribution over a random part of 0..t, an all-zero row (skipped) now and then,
    // rows a little off 1 (renormalised), garbage above the diagonal (ignored).
    std::vector<float> p(static_cast<size_t>(T) * T);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (int t = 0; t < T; ++t) {
      float* row = &p[static_cast<size_t>(t) * T];
      const bool skip = t % 11 == 5;
      double sum = 0;
      for (int s = 0; s <= t; ++s) {
        row[s] = skip || u(rng_) < 0.3f ? 0.0f : u(rng_);
        sum += row[s];
      }
      if (sum == 0 && !skip) row[t] = 1.0f, sum = 1;
      const double scale = (t % 7 == 3 ? 0.9995 : 1.0) / std::max(sum, 1e-30);
      for (int s = 0; s <= t; ++s) row[s] = static_cast<float>(row[s] * scale);
      for (int s = t + 1; s < T; ++s) row[s] = 100.0f * u(rng_) - 50.0f;
    }
    auto q = Put(Randn(static_cast<size_t>(T) * H * d, 0.4f));
    auto k = Put(Randn(static_cast<size_t>(T) * d, 0.4f));
    auto w = Put(Randn(static_cast<size_t>(T) * H, 0.7f));
    auto pd = Put(p);
    auto kl = Out(T), gq = Out(static_cast<size_t>(T) * H * d), gk = Out(static_cast<size_t>(T) * d),
         gw = Out(static_cast<size_t>(T) * H);
    IndexerDistillArgs c{.kl = kl.c, .grad_q = gq.c, .grad_k = gk.c, .grad_w = gw.c, .q = q.c, .k = k.c,
                         .w = w.c, .p = pd.c, .tokens = T, .heads = H, .head_dim = d};
    IndexerDistillArgs g{.kl = kl.g, .grad_q = gq.g, .grad_k = gk.g, .grad_w = gw.g, .q = q.g, .k = k.g,
                         .w = w.g, .p = pd.g, .tokens = T, .heads = H, .head_dim = d};
    ASSERT_TRUE(cpu_->IndexerDistill(c).ok()) << what;
    ASSERT_TRUE(gpu_->IndexerDistill(g).ok()) << what;
    // F32 scores and products against the double reference; the row sums are double on both. The gradients
    // get a looser bound: where q·k lies within F32 rounding of 0, ReLU's mask can differ between the two,
    // moving one term G·w·k of a gradient entirely (one run in ~50 exceeded 1e-4 at T = 1100, H = 9).
    ExpectClose(kl, 1e-4, "distill_kl " + what);
    ExpectClose(gq, 1e-3, "distill_grad_q " + what);
    ExpectClose(gk, 1e-3, "distill_grad_k " + what);
    ExpectClose(gw, 1e-3, "distill_grad_w " + what);
    // kl alone (no gradients) gives the same kl.
    auto kl2 = Out(T);
    g.kl = kl2.g;
    g.grad_q = g.grad_k = g.grad_w = nullptr;
    ASSERT_TRUE(gpu_->IndexerDistill(g).ok()) << what;
    EXPECT_EQ(Gpu(kl2), Gpu(kl)) << what;
  }
  IndexerDistillArgs bad{.kl = nullptr, .tokens = 3, .heads = 1, .head_dim = 8};
  EXPECT_EQ(gpu_->IndexerDistill(bad).code(), absl::StatusCode::kInvalidArgument);
  bad.head_dim = kIndexerDistillMaxHeadDim + 1;
  EXPECT_EQ(gpu_->IndexerDistill(bad).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ic::kernels

namespace ic::kernels {
namespace {

// ---- CUDA graphs (Backend::BeginCapture) ------------------------------------------------------------

// Embedding → RmsNorm → Gemm between two time marks, captured once and launched on fresh token ids each
// round: the capture runs nothing (its output keeps the NaN it held), each launch computes what the CPU
// reference computes for that round's ids, and the marks read the launch's device time.
TEST_F(BackendParityTest, CudaGraphReplaysCapturedOpsOnNewInputs) {
  if (gpu_->kind() == DeviceKind::kCpu) {  // the CPU self-check build: no graphs there
    EXPECT_EQ(gpu_->BeginCapture().code(), absl::StatusCode::kUnimplemented);
    return;
  }
  const int tokens = 5, dim = 64, vocab = 50, n = 96;
  std::vector<int32_t> ids(tokens);
  for (int32_t& id : ids) id = Uniform(0, vocab - 1);
  auto table = Put(Randn(static_cast<size_t>(vocab) * dim));
  auto norm_w = Put(Randn(dim));
  auto w = Put(Randn(static_cast<size_t>(n) * dim, 0.1f));
  auto idd = Put(ids);
  auto x = Out(static_cast<size_t>(tokens) * dim);
  auto y = Out(static_cast<size_t>(tokens) * n);
  auto run = [&](Backend& b, bool gpu) -> absl::Status {
    float* xp = gpu ? x.g : x.c;
    absl::Status s = b.Embedding({.out = xp, .table = gpu ? table.g : table.c, .ids = gpu ? idd.g : idd.c,
                                  .tokens = tokens, .dim = dim, .vocab = vocab});
    if (s.ok()) s = b.RmsNorm({.out = xp, .in = xp, .weight = gpu ? norm_w.g : norm_w.c, .rows = tokens, .dim = dim});
    if (s.ok()) s = b.Gemm({.c = gpu ? y.g : y.c, .a = xp, .b = gpu ? w.g : w.c, .m = tokens, .n = n, .k = dim});
    return s;
  };
  ASSERT_TRUE(run(*gpu_, true).ok());  // eager first: plans the GEMM
  ASSERT_TRUE(gpu_->Synchronize().ok());
  const std::vector<float> nan_y(y.n, kNaN);
  ASSERT_TRUE(gpu_->CopyToDevice(y.g, nan_y.data(), nan_y.size() * sizeof(float)).ok());

  gpu_->ResetTimeMarks();
  ASSERT_TRUE(gpu_->BeginCapture().ok());
  auto m0 = gpu_->TimeMark();
  ASSERT_TRUE(run(*gpu_, true).ok());
  auto m1 = gpu_->TimeMark();
  ASSERT_TRUE(m0.ok() && m1.ok());
  auto graph = gpu_->EndCapture();
  ASSERT_TRUE(graph.ok()) << graph.status();
  for (float v : Gpu(y)) ASSERT_TRUE(std::isnan(v)) << "the capture ran an op";

  for (int round = 0; round < 3; ++round) {
    for (int32_t& id : ids) id = Uniform(0, vocab - 1);
    ASSERT_TRUE(cpu_->CopyToDevice(idd.c, ids.data(), ids.size() * sizeof(int32_t)).ok());
    ASSERT_TRUE(gpu_->CopyToDevice(idd.g, ids.data(), ids.size() * sizeof(int32_t)).ok());
    ASSERT_TRUE(run(*cpu_, false).ok());
    gpu_->ResetTimeMarks();
    ASSERT_TRUE(gpu_->LaunchGraph(**graph).ok());
    auto dt = gpu_->SecondsBetween(*m0, *m1);
    ASSERT_TRUE(dt.ok()) << dt.status();
    EXPECT_GT(*dt, 0.0);
    ExpectClose(y, 1e-5, "graph_replay_round_" + std::to_string(round));
  }
}

// What a graph cannot hold is refused while capturing, named, and returned again by EndCapture; the
// backend works normally afterwards. A workspace that would have to grow is refused too (and growing one
// outside a capture changes WorkspaceGeneration).
TEST_F(BackendParityTest, CudaGraphCaptureRefusesHostWork) {
  if (gpu_->kind() == DeviceKind::kCpu) {
    EXPECT_EQ(gpu_->EndCapture().status().code(), absl::StatusCode::kUnimplemented);
    return;
  }
  EXPECT_EQ(gpu_->EndCapture().status().code(), absl::StatusCode::kFailedPrecondition);  // not capturing
  auto buf = Out(16);
  std::vector<float> host(16, 1.0f);
  ASSERT_TRUE(gpu_->BeginCapture().ok());
  EXPECT_EQ(gpu_->BeginCapture().code(), absl::StatusCode::kFailedPrecondition);
  const absl::Status copy = gpu_->CopyToDevice(buf.g, host.data(), 16 * sizeof(float));
  EXPECT_EQ(copy.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(copy.message().find("CopyToDevice"), std::string::npos) << copy;
  EXPECT_EQ(gpu_->Allocate(64).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(gpu_->CopyToHost(host.data(), buf.g, 16 * sizeof(float)).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(gpu_->Synchronize().code(), absl::StatusCode::kFailedPrecondition);
  auto ended = gpu_->EndCapture();
  EXPECT_EQ(ended.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(ended.status().message().find("CopyToDevice"), std::string::npos) << ended.status();
  ASSERT_TRUE(gpu_->CopyToDevice(buf.g, host.data(), 16 * sizeof(float)).ok());  // usable again
  EXPECT_EQ(Gpu(buf), host);

  // Top-k over long rows needs op scratch: growing it inside a capture is refused, outside it moves the
  // workspace generation.
  const int rows = 2, stride = 200000, k = 64;
  auto scores = Put(Randn(static_cast<size_t>(rows) * stride));
  auto lengths = Put(std::vector<int32_t>(rows, stride));
  auto out = OutI(static_cast<size_t>(rows) * k);
  const TopkArgs topk{.out = out.g, .scores = scores.g, .lengths = lengths.g, .rows = rows, .stride = stride, .k = k};
  const uint64_t generation = gpu_->WorkspaceGeneration();
  ASSERT_TRUE(gpu_->BeginCapture().ok());
  const absl::Status grow = gpu_->Topk(topk);
  EXPECT_EQ(grow.code(), absl::StatusCode::kFailedPrecondition) << grow;
  EXPECT_NE(grow.message().find("workspace"), std::string::npos) << grow;
  EXPECT_EQ(gpu_->EndCapture().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(gpu_->WorkspaceGeneration(), generation);
  ASSERT_TRUE(gpu_->Topk(topk).ok());
  EXPECT_GT(gpu_->WorkspaceGeneration(), generation);
  ASSERT_TRUE(gpu_->Synchronize().ok());
  ASSERT_TRUE(gpu_->BeginCapture().ok());  // now sized: the same op records
  ASSERT_TRUE(gpu_->Topk(topk).ok());
  auto graph = gpu_->EndCapture();
  ASSERT_TRUE(graph.ok()) << graph.status();
  auto cpu_out = OutI(static_cast<size_t>(rows) * k);
  ASSERT_TRUE(cpu_->Topk({.out = cpu_out.c, .scores = scores.c, .lengths = lengths.c, .rows = rows, .stride = stride,
                          .k = k}).ok());
  const std::vector<int32_t> poison(out.n, -7);
  ASSERT_TRUE(gpu_->CopyToDevice(out.g, poison.data(), poison.size() * sizeof(int32_t)).ok());
  ASSERT_TRUE(gpu_->LaunchGraph(**graph).ok());
  EXPECT_EQ(Gpu(out), Cpu(cpu_out));
}

}  // namespace
}  // namespace ic::kernels
