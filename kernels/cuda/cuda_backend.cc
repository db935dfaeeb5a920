// CudaBackend: the host side of the CUDA backend. Validates arguments (InvalidArgument naming the
// field), launches the kernels of kernels/cuda/*.cu on the backend's stream, runs F32 GEMM through
// cuBLASLt, and turns cudaError_t / cublasStatus_t into absl::Status with file:line.
#include "kernels/cuda/cuda_backend.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_kernels.h"

namespace ic::kernels::cuda {
namespace {

absl::Status CudaError(cudaError_t e, const char* what, const char* file, int line) {
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", what, ": ", cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}

absl::Status CublasError(cublasStatus_t s, const char* what, const char* file, int line) {
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", what, ": cuBLASLt status ",
                                          static_cast<int>(s)));
}

#define IC_CUDA_RETURN_IF_ERROR(expr)                                          \
  do {                                                                         \
    const cudaError_t ic_cuda_e_ = (expr);                                     \
    if (ic_cuda_e_ != cudaSuccess) return CudaError(ic_cuda_e_, #expr, __FILE__, __LINE__); \
  } while (0)

#define IC_CUBLAS_RETURN_IF_ERROR(expr)                                        \
  do {                                                                         \
    const cublasStatus_t ic_cublas_s_ = (expr);                                \
    if (ic_cublas_s_ != CUBLAS_STATUS_SUCCESS)                                 \
      return CublasError(ic_cublas_s_, #expr, __FILE__, __LINE__);             \
  } while (0)

#define IC_RETURN_IF_ERROR_(expr)              \
  do {                                         \
    absl::Status ic_s_ = (expr);               \
    if (!ic_s_.ok()) return ic_s_;             \
  } while (0)

// InvalidArgument "<op>: <pieces…>" when `cond` fails.
#define IC_ARG_CHECK(cond, op, ...)                                                    \
  do {                                                                                 \
    if (!(cond)) return absl::InvalidArgumentError(absl::StrCat(op, ": ", __VA_ARGS__)); \
  } while (0)

constexpr size_t kCublasWorkspaceBytes = 32u << 20;
// Default budget of one indexer score tile ([rows, max_len] floats); the tile's rows follow from it.
// IC_CUDA_INDEXER_TILE_BYTES overrides it at backend creation (tests use it to force many tiles).
constexpr size_t kIndexerTileBytes = 256u << 20;

int BytesAlignment(uint64_t v) {
  for (int a : {256, 128, 64, 32, 16, 8}) {
    if (v % a == 0) return a;
  }
  return 4;
}

int PointerAlignment(const void* p) { return BytesAlignment(reinterpret_cast<uintptr_t>(p)); }

// One cached cuBLASLt plan per GEMM shape (descriptors + the heuristic's first algorithm).
struct GemmKey {
  int m, n, k, lda, ldb, ldc, batch;
  int64_t sa, sb, sc;
  bool bt, beta_zero;
  int align_a, align_b, align_c;
  bool bf16;  // BF16 A and B (GemmArgs::b_bf16), F32 C
  bool fp8 = false;  // block-scaled E4M3 A and B (GemmArgs::b_fp8), F32 C
  auto Tie() const {
    return std::tie(m, n, k, lda, ldb, ldc, batch, sa, sb, sc, bt, beta_zero, align_a, align_b,
                    align_c, bf16, fp8);
  }
  bool operator<(const GemmKey& o) const { return Tie() < o.Tie(); }
};

// A device buffer that grows on demand and is reused across ops (stream-ordered). Growing waits for the
// stream first (work in flight may still read the old buffer) and bumps *generation (captured CUDA graphs
// that point at the old buffer are stale); it is refused while a graph is being captured.
class GrowingBuffer {
 public:
  GrowingBuffer() = default;
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;
  ~GrowingBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }

  absl::StatusOr<void*> Get(size_t bytes, cudaStream_t stream, int device, bool capturing, uint64_t* generation) {
    if (bytes <= bytes_) return ptr_;
    if (capturing) {
      return absl::FailedPreconditionError(absl::StrCat("cuda:", device, ": a workspace would grow from ", bytes_,
                                                        " to ", bytes, " bytes during CUDA graph capture"));
    }
    ++*generation;
    IC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    if (ptr_ != nullptr) IC_CUDA_RETURN_IF_ERROR(cudaFree(ptr_));
    const size_t want = std::max(bytes, bytes_ * 2);
    ptr_ = nullptr;
    bytes_ = 0;
    const cudaError_t e = cudaMalloc(&ptr_, want);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      ptr_ = nullptr;
      return absl::ResourceExhaustedError(
          absl::StrCat("cuda:", device, ": workspace of ", want, " bytes: out of memory"));
    }
    IC_CUDA_RETURN_IF_ERROR(e);
    bytes_ = want;
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// The rows (m) a Gemm plan is made for: m itself up to 32 (decode batches), else the next power of two.
// MoE expert GEMMs see a different m at almost every call (the tokens routed to the expert); planning
// per bucket keeps the cuBLASLt heuristic query (tens of µs) out of the steady state and bounds the cache.
// The plan's layouts are then set to the call's m before each matmul.
int GemmRowBucket(int m) {
  if (m <= 32) return m;
  int b = 64;
  while (b < m && b < (1 << 30)) b <<= 1;
  return b;
}

struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  int m = 0;  // the rows b and c are currently laid out for
};

// An instantiated graph and the number of time marks its capture issued.
class CudaGraph final : public CapturedGraph {
 public:
  CudaGraph(cudaGraphExec_t exec, size_t marks, size_t nodes, int device)
      : exec_(exec), marks_(marks), nodes_(nodes), device_(device) {}
  ~CudaGraph() override {
    cudaSetDevice(device_);
    cudaGraphExecDestroy(exec_);
  }
  cudaGraphExec_t exec() const { return exec_; }
  size_t marks() const { return marks_; }
  size_t num_nodes() const override { return nodes_; }

 private:
  cudaGraphExec_t exec_;
  size_t marks_;
  size_t nodes_;
  int device_;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {}

  ~CudaBackend() override {
    cudaSetDevice(device_);
    if (capturing_) {  // a capture never ended: discard it
      cudaGraph_t g = nullptr;
      if (cudaStreamEndCapture(stream_, &g) == cudaSuccess && g != nullptr) cudaGraphDestroy(g);
      cudaGetLastError();
    }
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (void* p : deferred_frees_) cudaFree(p);
    for (auto& [key, plan] : gemm_plans_) {
      cublasLtMatrixLayoutDestroy(plan.a);
      cublasLtMatrixLayoutDestroy(plan.b);
      cublasLtMatrixLayoutDestroy(plan.c);
      cublasLtMatmulDescDestroy(plan.op);
    }
    for (cudaEvent_t ev : marks_) cudaEventDestroy(ev);
    if (lt_ != nullptr) cublasLtDestroy(lt_);
    if (cublas_ws_ != nullptr) cudaFree(cublas_ws_);
    if (dev_err_ != nullptr) cudaFree(dev_err_);
    if (host_err_ != nullptr) cudaFreeHost(host_err_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init() {
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    if (const char* e = std::getenv("IC_CUDA_INDEXER_TILE_BYTES"); e != nullptr && *e != '\0') {
      indexer_tile_bytes_ = std::max<size_t>(std::strtoull(e, nullptr, 10), sizeof(float));
    }
    cudaDeviceProp prop{};
    IC_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device_));
    device_name_ = prop.name;
    int optin = 0;
    IC_CUDA_RETURN_IF_ERROR(
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_));
    max_shared_ = static_cast<size_t>(optin);
    IC_CUDA_RETURN_IF_ERROR(ConfigureAttentionKernels(max_shared_));
    IC_CUDA_RETURN_IF_ERROR(ConfigureIndexerKernels(max_shared_));
    IC_CUDA_RETURN_IF_ERROR(ConfigureDistillKernels(max_shared_));
    IC_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    IC_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&lt_));
    IC_CUDA_RETURN_IF_ERROR(cudaMalloc(&cublas_ws_, kCublasWorkspaceBytes));
    IC_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&dev_err_), 2 * sizeof(DeviceError)));
    IC_CUDA_RETURN_IF_ERROR(cudaMemset(dev_err_, 0, 2 * sizeof(DeviceError)));
    IC_CUDA_RETURN_IF_ERROR(
        cudaMallocHost(reinterpret_cast<void**>(&host_err_), 2 * sizeof(DeviceError)));
    std::memset(host_err_, 0, 2 * sizeof(DeviceError));
    return absl::OkStatus();
  }

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  std::string name() const override { return absl::StrCat("cuda:", device_, " (", device_name_, ")"); }

  // ---- memory ----
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    IC_RETURN_IF_ERROR_(Refuse("Allocate"));
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky-free error state
      return absl::ResourceExhaustedError(
          absl::StrCat("cuda:", device_, ": cudaMalloc of ", bytes, " bytes failed: out of memory"));
    }
    IC_CUDA_RETURN_IF_ERROR(e);
    return p;
  }

  void Free(void* ptr) override {
    if (ptr == nullptr) return;
    if (capturing_) {  // cannot synchronise now: the pointer is kept until the backend goes
      if (capture_error_.ok()) capture_error_ = RefuseWhileCapturing("Free");
      deferred_frees_.push_back(ptr);
      return;
    }
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);  // work in flight may still read it
    cudaFree(ptr);
  }

  absl::Status CopyToDevice(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    IC_ARG_CHECK(dst != nullptr && host_src != nullptr, "CopyToDevice", "null pointer");
    IC_RETURN_IF_ERROR_(Refuse("CopyToDevice"));
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    IC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
    IC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));  // the caller may reuse host_src
    return absl::OkStatus();
  }

  absl::Status CopyToHost(void* host_dst, const void* src, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    IC_ARG_CHECK(host_dst != nullptr && src != nullptr, "CopyToHost", "null pointer");
    IC_RETURN_IF_ERROR_(Refuse("CopyToHost"));
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    IC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    IC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return absl::OkStatus();
  }

  absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    IC_ARG_CHECK(dst != nullptr && src != nullptr, "CopyOnDevice", "null pointer");
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    IC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    return absl::OkStatus();
  }

  absl::Status Memset(void* dst, int value, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    IC_ARG_CHECK(dst != nullptr, "Memset", "null pointer");
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    IC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dst, value, bytes, stream_));
    return absl::OkStatus();
  }

  absl::Status Synchronize() override {
    IC_RETURN_IF_ERROR_(Refuse("Synchronize"));
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    IC_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(&host_err_[1], &dev_err_[1], sizeof(DeviceError), cudaMemcpyDeviceToHost, stream_));
    IC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    const DeviceError e = host_err_[1];
    if (e.code != kErrNone) {
      IC_CUDA_RETURN_IF_ERROR(cudaMemset(&dev_err_[1], 0, sizeof(DeviceError)));
      return DeviceErrorStatus(e, "an earlier op");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int> TimeMark() override {
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    if (marks_used_ == marks_.size()) {
      cudaEvent_t ev = nullptr;
      IC_CUDA_RETURN_IF_ERROR(cudaEventCreate(&ev));
      marks_.push_back(ev);
    }
    // While capturing, an external record node: each launch of the graph records the event.
    IC_CUDA_RETURN_IF_ERROR(capturing_ ? cudaEventRecordWithFlags(marks_[marks_used_], stream_, cudaEventRecordExternal)
                                       : cudaEventRecord(marks_[marks_used_], stream_));
    return static_cast<int>(marks_used_++);
  }

  absl::StatusOr<double> SecondsBetween(int from, int to) override {
    IC_RETURN_IF_ERROR_(Refuse("SecondsBetween"));
    const int n = static_cast<int>(marks_used_);
    IC_ARG_CHECK(from >= 0 && from < n && to >= 0 && to < n, "SecondsBetween", "marks ", from, " and ", to,
                 " are not both issued (", n, " since the last reset)");
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    IC_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(marks_[to]));
    float ms = 0.0f;
    IC_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, marks_[from], marks_[to]));
    return static_cast<double>(ms) * 1e-3;
  }

  void ResetTimeMarks() override { marks_used_ = 0; }

  // ---- CUDA graphs (Backend::BeginCapture) ----
  absl::Status BeginCapture() override {
    if (capturing_) return absl::FailedPreconditionError(absl::StrCat("cuda:", device_, ": already capturing"));
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    // Thread-local mode: this thread's unsafe calls (cudaMalloc …) fail instead of invalidating the capture
    // silently; other threads' work on other streams is unaffected.
    IC_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
    capture_error_ = absl::OkStatus();
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<CapturedGraph>> EndCapture() override {
    if (!capturing_) return absl::FailedPreconditionError(absl::StrCat("cuda:", device_, ": not capturing"));
    capturing_ = false;
    cudaSetDevice(device_);
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    absl::Status status = capture_error_;
    capture_error_ = absl::OkStatus();
    if (status.ok() && end != cudaSuccess) {
      status = absl::InternalError(absl::StrCat("cuda:", device_, ": cudaStreamEndCapture: ", cudaGetErrorString(end)));
    }
    cudaGetLastError();  // a failed capture leaves its error behind
    cudaGraphExec_t exec = nullptr;
    size_t nodes = 0;
    if (status.ok() && cudaGraphGetNodes(graph, nullptr, &nodes) != cudaSuccess) {
      cudaGetLastError();
      nodes = 0;
    }
    if (status.ok()) {
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      if (e != cudaSuccess) {
        cudaGetLastError();
        status = absl::InternalError(absl::StrCat("cuda:", device_, ": cudaGraphInstantiate: ", cudaGetErrorString(e)));
      }
    }
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (!status.ok()) return status;
    return std::unique_ptr<CapturedGraph>(new CudaGraph(exec, marks_used_, nodes, device_));
  }

  absl::Status LaunchGraph(CapturedGraph& graph) override {
    IC_RETURN_IF_ERROR_(RefuseWhileCapturing("LaunchGraph"));
    auto* g = dynamic_cast<CudaGraph*>(&graph);
    IC_ARG_CHECK(g != nullptr, "LaunchGraph", "the graph was not captured by a CUDA backend");
    IC_ARG_CHECK(g->marks() <= marks_.size(), "LaunchGraph", "the graph was captured by another backend");
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    IC_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(g->exec(), stream_));
    if (g->marks() > 0) marks_used_ = g->marks();  // a graph without marks leaves the caller's alone
    return absl::OkStatus();
  }

  uint64_t WorkspaceGeneration() const override { return workspace_generation_; }

  absl::StatusOr<MemoryInfo> GetMemoryInfo() override {
    IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    size_t free_bytes = 0, total_bytes = 0;
    IC_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
    return MemoryInfo{.free_bytes = free_bytes, .total_bytes = total_bytes};
  }

  // ---- ops ----
  absl::Status Gemm(const GemmArgs& g) override;
  absl::Status Embedding(const EmbeddingArgs& a) override;
  absl::Status RmsNorm(const NormArgs& a) override { return Norm(a, false, "RmsNorm"); }
  absl::Status LayerNorm(const NormArgs& a) override { return Norm(a, true, "LayerNorm"); }
  absl::Status Rope(const RopeArgs& a) override;
  absl::Status SiluMul(const SiluMulArgs& a) override;
  absl::Status Copy2D(const Copy2DArgs& a) override;
  absl::Status CacheWrite(const CacheWriteArgs& a) override;
  absl::Status Attention(const AttentionArgs& a) override;
  absl::Status IndexerTopk(const IndexerArgs& a) override;
  absl::Status Topk(const TopkArgs& a) override;
  absl::Status MoeRoute(const MoeRouteArgs& a) override;
  absl::Status MoeExperts(const MoeExpertsArgs& a) override;
  absl::Status GatherRows(const RowsArgs& a) override;
  absl::Status ScatterAddRows(const RowsArgs& a) override;
  absl::Status CrossEntropy(const CrossEntropyArgs& a) override;
  absl::Status Hadamard(const HadamardArgs& a) override;
  absl::Status IndexerDistill(const IndexerDistillArgs& a) override;

 private:
  absl::Status Norm(const NormArgs& a, bool layer_norm, const char* op);
  absl::StatusOr<GemmPlan*> GetGemmPlan(const GemmKey& key);
  absl::Status RunGemmPlan(GemmKey key, int m, float alpha, float beta, const void* a, const void* b, float* c,
                           const float* a_scale = nullptr, const float* b_scale = nullptr);
  absl::Status GemmFp8(const GemmArgs& g, int lda, int ldb, int ldc);
  absl::Status CheckLayout(const TokenLayout& l, const char* op);

  // The ops' shared workspace, at least `bytes` (Indexer tiles, top-k partials, attention split-K).
  absl::StatusOr<void*> Scratch(size_t bytes) { return Grow(scratch_, bytes); }
  absl::StatusOr<void*> Grow(GrowingBuffer& buffer, size_t bytes) {
    auto p = buffer.Get(bytes, stream_, device_, capturing_, &workspace_generation_);
    if (!p.ok() && capturing_ && capture_error_.ok()) capture_error_ = p.status();
    return p;
  }

  // Refuses (and remembers for EndCapture) what a CUDA graph cannot record.
  absl::Status Refuse(const char* what) {
    absl::Status s = RefuseWhileCapturing(what);
    if (!s.ok() && capture_error_.ok()) capture_error_ = s;
    return s;
  }
  // FailedPrecondition for what a CUDA graph cannot record (Backend::BeginCapture).
  absl::Status RefuseWhileCapturing(const char* what) const {
    if (!capturing_) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("cuda:", device_, ": ", what, " while a CUDA graph is being captured"));
  }
  // The device-error slot of an op that reports its errors at once (Embedding, CrossEntropy): while
  // capturing, the deferred slot, reported by the Synchronize() after a launch of the graph.
  DeviceError* SyncErrorSlot() const { return capturing_ ? &dev_err_[1] : &dev_err_[0]; }
  absl::Status CheckSyncErrorUnlessCapturing(const char* op) {
    return capturing_ ? absl::OkStatus() : CheckSyncError(op);
  }

  // Waits for the stream and reports the synchronous error slot (Embedding, CrossEntropy).
  absl::Status CheckSyncError(const char* op) {
    IC_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(&host_err_[0], &dev_err_[0], sizeof(DeviceError), cudaMemcpyDeviceToHost, stream_));
    IC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    const DeviceError e = host_err_[0];
    if (e.code == kErrNone) return absl::OkStatus();
    IC_CUDA_RETURN_IF_ERROR(cudaMemset(&dev_err_[0], 0, sizeof(DeviceError)));
    return DeviceErrorStatus(e, op);
  }

  static absl::Status DeviceErrorStatus(const DeviceError& e, const char* op) {
    switch (e.code) {
      case kErrEmbeddingId:
        return absl::InvalidArgumentError(absl::StrCat(op, ": ids[", e.index, "] = ", e.value,
                                                       " is outside the vocabulary [0, ", e.limit, ")"));
      case kErrTarget:
        return absl::InvalidArgumentError(absl::StrCat(op, ": targets[", e.index, "] = ", e.value,
                                                       " is not below vocab = ", e.limit));
      case kErrCacheSlot:
        return absl::InvalidArgumentError(absl::StrCat("CacheWrite (", op, "): slots[", e.index, "] = ",
                                                       e.value, " is outside [0, num_slots = ", e.limit,
                                                       ")"));
      case kErrBlockTable:
        return absl::InvalidArgumentError(absl::StrCat(op, ": token ", e.index,
                                                       ": block_tables entry ", e.value,
                                                       " maps outside the cache (num_slots = ", e.limit,
                                                       ")"));
      case kErrPosition:
        return absl::InvalidArgumentError(absl::StrCat(op, ": token ", e.index, ": position ", e.value,
                                                       " is beyond the block table (max ", e.limit,
                                                       " positions) or its sequence is out of range"));
      case kErrRow:
        return absl::InvalidArgumentError(absl::StrCat(op, ": GatherRows/ScatterAddRows: rows[", e.index,
                                                       "] = ", e.value, " is negative"));
      case kErrExpert:
        return absl::InvalidArgumentError(absl::StrCat(op, ": MoeExperts: expert_ids[", e.index, "] = ", e.value,
                                                       " is outside [0, experts = ", e.limit, ")"));
      case kErrExpertWeights:
        return absl::InvalidArgumentError(absl::StrCat(op, ": MoeExperts: expert ", e.value, " (pair ", e.index,
                                                       ") has a null weight pointer"));
      case kErrLength:
        return absl::InvalidArgumentError(absl::StrCat(op, ": Topk: lengths[", e.index, "] = ", e.value,
                                                       " out of range [0, stride = ", e.limit, "]"));
      default:
        return absl::InternalError(absl::StrCat(op, ": device error code ", e.code));
    }
  }

  DevLayout Dev(const TokenLayout& l) const {
    return DevLayout{l.token_seq, l.token_pos, l.block_tables, l.tokens,
                     l.num_seqs,  l.max_blocks_per_seq, l.block_size};
  }

  int device_;
  std::string device_name_;
  size_t max_shared_ = 48 << 10;
  size_t indexer_tile_bytes_ = kIndexerTileBytes;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* cublas_ws_ = nullptr;
  GrowingBuffer scratch_;
  std::vector<cudaEvent_t> marks_;  // TimeMark events, reused after ResetTimeMarks
  size_t marks_used_ = 0;
  GrowingBuffer gemm_a_;   // the BF16 copy of a BF16-weight Gemm's A operand (FP8: bytes, then scales)
  GrowingBuffer gemm_c_;   // an FP8 Gemm's C when m is not a multiple of 4
  DeviceError* dev_err_ = nullptr;   // [0]: checked by the op itself; [1]: reported at Synchronize()
  DeviceError* host_err_ = nullptr;  // pinned mirror
  std::map<GemmKey, GemmPlan> gemm_plans_;
  bool capturing_ = false;             // between BeginCapture and EndCapture
  std::vector<void*> deferred_frees_;  // Free()d while capturing; freed by the destructor
  absl::Status capture_error_;         // the first op refused while capturing
  uint64_t workspace_generation_ = 0;  // bumped by every GrowingBuffer reallocation
};


// ---------------------------------------------------------------------------------------------------
// GEMM. Row-major C[m,n] = A[m,k]·op(B) is column-major Cᵀ[n,m] = op(B)ᵀ·Aᵀ, so cuBLASLt gets
// (B, A) swapped: its "A" is our B (transposed iff B is [k,n]… see below), its "B" our A.
//   b_transposed (B is [n,k], ld ldb): column-major view is [k,n]; we need [n,k] → op T.
//   otherwise    (B is [k,n], ld ldb): column-major view is [n,k] → op N.
// F32 compute (CUBLAS_COMPUTE_32F, no TF32) so that results match the CPU reference closely; with BF16
// weights A and B are CUDA_R_16BF (A cast by the backend first) and C stays CUDA_R_32F.
absl::StatusOr<GemmPlan*> CudaBackend::GetGemmPlan(const GemmKey& key) {
  auto it = gemm_plans_.find(key);
  if (it != gemm_plans_.end()) return &it->second;
  GemmPlan plan;
  IC_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = key.bt ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
  IC_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  IC_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  // Our B as cuBLASLt's A: rows × cols (column-major) = bt ? k × n : n × k.
  const cudaDataType_t in_type = key.fp8 ? CUDA_R_8F_E4M3 : key.bf16 ? CUDA_R_16BF : CUDA_R_32F;
  if (key.fp8) {  // our B (the weight): 128 × 128 blocks; our A (activations): 1 × 128 blocks
    const cublasLtMatmulMatrixScale_t wmode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
    const cublasLtMatmulMatrixScale_t amode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    IC_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &wmode, sizeof(wmode)));
    IC_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &amode, sizeof(amode)));
    // The heuristic refuses null scale pointers (INVALID_VALUE); each call sets its own (RunGemmPlan).
    const void* placeholder = cublas_ws_;
    for (auto attr : {CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER}) {
      IC_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(plan.op, attr, &placeholder, sizeof(placeholder)));
    }
  }
  IC_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.a, in_type, key.bt ? key.k : key.n,
                                                       key.bt ? key.n : key.k, key.ldb));
  IC_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.b, in_type, key.k, key.m, key.lda));
  IC_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.c, CUDA_R_32F, key.n, key.m, key.ldc));
  if (key.batch > 1) {
    const int32_t batch = key.batch;
    const std::pair<cublasLtMatrixLayout_t, int64_t> layouts[] = {
        {plan.a, key.sb}, {plan.b, key.sa}, {plan.c, key.sc}};
    for (const auto& [layout, stride] : layouts) {
      IC_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch)));
      IC_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
    }
  }
  cublasLtMatmulPreference_t pref = nullptr;
  IC_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kCublasWorkspaceBytes;
  const uint32_t al_a = key.align_b, al_b = key.align_a, al_c = key.align_c;  // swapped operands
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                       sizeof(al_a));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
                                       sizeof(al_b));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                       sizeof(al_c));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c,
                                       sizeof(al_c));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(lt_, plan.op, plan.a, plan.b, plan.c,
                                                           plan.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(plan.a);
    cublasLtMatrixLayoutDestroy(plan.b);
    cublasLtMatrixLayoutDestroy(plan.c);
    cublasLtMatmulDescDestroy(plan.op);
    return absl::UnimplementedError(absl::StrCat(
        __FILE__, ":", __LINE__, ": Gemm: cuBLASLt has no algorithm for m=", key.m, " n=", key.n,
        " k=", key.k, " lda=", key.lda, " ldb=", key.ldb, " ldc=", key.ldc, " batch=", key.batch,
        " (status ", static_cast<int>(hs), ")"));
  }
  plan.algo = result.algo;
  plan.m = key.m;
  return &gemm_plans_.emplace(key, plan).first->second;
}

absl::Status CudaBackend::Gemm(const GemmArgs& g) {
  constexpr const char* op = "Gemm";
  IC_ARG_CHECK(g.m >= 0 && g.n >= 0 && g.k >= 0, op, "negative size m=", g.m, " n=", g.n, " k=", g.k);
  IC_ARG_CHECK(g.batch >= 0, op, "batch = ", g.batch, " is negative");
  IC_ARG_CHECK(g.lda >= 0 && g.ldb >= 0 && g.ldc >= 0, op, "negative leading dimension lda = ", g.lda,
               ", ldb = ", g.ldb, ", ldc = ", g.ldc);
  IC_ARG_CHECK(g.stride_a >= 0 && g.stride_b >= 0 && g.stride_c >= 0, op, "negative batch stride");
  IC_ARG_CHECK(g.b == nullptr || g.b_bf16 == nullptr, op, "both b and b_bf16 are set");
  IC_RETURN_IF_ERROR_(ValidateGemmFp8(g));
  if (g.m == 0 || g.n == 0 || g.batch == 0) return absl::OkStatus();
  const int lda = g.lda != 0 ? g.lda : g.k;
  const int ldb = g.ldb != 0 ? g.ldb : (g.b_transposed ? g.k : g.n);
  const int ldc = g.ldc != 0 ? g.ldc : g.n;
  IC_ARG_CHECK(lda >= g.k, op, "lda = ", lda, " < k = ", g.k);
  IC_ARG_CHECK(ldb >= (g.b_transposed ? g.k : g.n), op, "ldb = ", ldb, " too small");
  IC_ARG_CHECK(ldc >= g.n, op, "ldc = ", ldc, " < n = ", g.n);
  IC_ARG_CHECK(g.batch == 1 || g.stride_c != 0, op, "stride_c = 0 with batch = ", g.batch);
  IC_ARG_CHECK(g.c != nullptr, op, "c is null");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (g.k == 0) {  // C = beta · C
    IC_CUDA_RETURN_IF_ERROR(LaunchScale2D(g.c, g.m, g.n, ldc, g.batch, g.stride_c, g.beta, stream_));
    return absl::OkStatus();
  }
  IC_ARG_CHECK(g.a != nullptr, op, "a is null");
  if (g.b_fp8 != nullptr) return GemmFp8(g, lda, ldb, ldc);
  IC_ARG_CHECK(g.b != nullptr || g.b_bf16 != nullptr, op, "b is null (set b, b_bf16 or b_fp8)");
  const bool bf16 = g.b_bf16 != nullptr;
  // Decode-sized BF16 Linear (one matrix, B = [n, k], m ≤ 8): one memory-bound GEMV launch that rounds A
  // as it reads it, instead of a cast and a cuBLASLt call tuned for larger m.
  if (bf16 && g.batch == 1 && g.b_transposed && g.m <= kGemvBf16MaxRows) {
    IC_CUDA_RETURN_IF_ERROR(
        LaunchGemvBf16(g.c, g.a, g.b_bf16, g.m, g.n, g.k, lda, ldb, ldc, g.alpha, g.beta, stream_));
    return absl::OkStatus();
  }
  // BF16: A is cast into a dense [batch, m, k] BF16 buffer first (stream-ordered; the buffer is reused).
  const void* a = g.a;
  const void* b = bf16 ? static_cast<const void*>(g.b_bf16) : g.b;
  int lda_used = lda;
  int64_t stride_a = g.stride_a;
  if (bf16) {
    const int64_t a_elems = static_cast<int64_t>(g.m) * g.k;
    auto a16_or = Grow(gemm_a_, static_cast<size_t>(a_elems * g.batch) * 2);
    if (!a16_or.ok()) return a16_or.status();
    void* a16 = *a16_or;
    IC_CUDA_RETURN_IF_ERROR(LaunchCastToBf16(static_cast<uint16_t*>(a16), g.a, g.m, g.k, lda, g.batch,
                                             g.stride_a, stream_));
    a = a16;
    lda_used = g.k;
    stride_a = a_elems;
  }
  const int64_t elem = bf16 ? 2 : 4;
  GemmKey key{g.m, g.n, g.k, lda_used, ldb, ldc, g.batch,
              g.batch > 1 ? stride_a : 0, g.batch > 1 ? g.stride_b : 0, g.batch > 1 ? g.stride_c : 0,
              g.b_transposed, g.beta == 0.0f,
              PointerAlignment(a), PointerAlignment(b), PointerAlignment(g.c), bf16};
  // Strides enter the alignment too (every batch entry's pointer must meet it).
  if (g.batch > 1) {
    key.align_a = std::min(key.align_a, BytesAlignment(stride_a * elem));
    key.align_b = std::min(key.align_b, BytesAlignment(g.stride_b * elem));
    key.align_c = std::min(key.align_c, BytesAlignment(g.stride_c * 4));
  }
  return RunGemmPlan(key, g.m, g.alpha, g.beta, a, b, g.c);
}

// The plan of m's bucket (GemmRowBucket), laid out for this m; should cuBLASLt refuse the bucket's
// algorithm for this m, a plan made for exactly this m. key.m is overwritten.
absl::Status CudaBackend::RunGemmPlan(GemmKey key, int m, float alpha, float beta, const void* a, const void* b,
                                      float* c, const float* a_scale, const float* b_scale) {
  key.m = GemmRowBucket(m);
  auto run = [&](GemmPlan* plan) -> cublasStatus_t {
    if (plan->m != m) {
      const uint64_t cols = static_cast<uint64_t>(m);
      for (cublasLtMatrixLayout_t layout : {plan->b, plan->c}) {
        const cublasStatus_t st =
            cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof(cols));
        if (st != CUBLAS_STATUS_SUCCESS) return st;
      }
      plan->m = m;
    }
    if (key.fp8) {  // per call: the weight's scales and this call's activation scales
      cublasStatus_t st = cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &b_scale,
                                                         sizeof(b_scale));
      if (st == CUBLAS_STATUS_SUCCESS) {
        st = cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale, sizeof(a_scale));
      }
      if (st != CUBLAS_STATUS_SUCCESS) return st;
    }
    return cublasLtMatmul(lt_, plan->op, &alpha, b, plan->a, a, plan->b, &beta, c, plan->c, c, plan->c, &plan->algo,
                          cublas_ws_, kCublasWorkspaceBytes, stream_);
  };
  auto plan_or = GetGemmPlan(key);
  if (!plan_or.ok()) return plan_or.status();
  cublasStatus_t st = run(*plan_or);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED && key.m != m) {
    key.m = m;
    plan_or = GetGemmPlan(key);
    if (!plan_or.ok()) return plan_or.status();
    st = run(*plan_or);
  }
  IC_CUBLAS_RETURN_IF_ERROR(st);
  return absl::OkStatus();
}

// GemmArgs::b_fp8: A quantised per row and 128-column block into the reused buffer (rows padded to a multiple
// of 4, which cuBLASLt's block-scaled FP8 needs; C then goes through a scratch of the padded rows), then one
// cuBLASLt call with the block scales. Measured on the H200 (tools/device probe, cuBLASLt 13.1): the weight
// scales' implied row stride is ceil(k/128) rounded up to 4, and m % 4 != 0 is NOT_SUPPORTED.
absl::Status CudaBackend::GemmFp8(const GemmArgs& g, int lda, int ldb, int ldc) {
  constexpr const char* op = "Gemm";
  const int k_blocks = (g.k + 127) / 128, scale_ld = Fp8ScaleLd(g.k);
  IC_ARG_CHECK(g.k % 16 == 0, op, "b_fp8 needs k a multiple of 16 (cuBLASLt FP8), got k = ", g.k);
  IC_ARG_CHECK(ldb % 16 == 0, op, "b_fp8 needs ldb a multiple of 16 bytes, got ldb = ", ldb);
  IC_ARG_CHECK(PointerAlignment(g.b_fp8) >= 16, op, "b_fp8 is not 16-byte aligned");
  IC_ARG_CHECK(g.b_scale_ld == 0 || g.b_scale_ld == scale_ld, op, "b_scale_ld = ", g.b_scale_ld,
               " must be ceil(k / 128) = ", k_blocks, " rounded up to a multiple of 4 = ", scale_ld,
               " (cuBLASLt's layout of 128 x 128 block scales)");
  if (g.m <= kGemvBf16MaxRows && GemvFp8Supported(g.a, g.b_fp8, g.k, lda, ldb)) {  // decode: one launch
    IC_CUDA_RETURN_IF_ERROR(LaunchGemvFp8(g.c, g.a, g.b_fp8, g.b_scale, scale_ld, g.m, g.n, g.k, lda, ldb, ldc,
                                          g.alpha, g.beta, stream_));
    return absl::OkStatus();
  }
  const int m4 = (g.m + 3) / 4 * 4;
  const size_t q_bytes = (static_cast<size_t>(m4) * g.k + 255) / 256 * 256;
  auto ws = Grow(gemm_a_, q_bytes + static_cast<size_t>(k_blocks) * m4 * sizeof(float));
  if (!ws.ok()) return ws.status();
  uint8_t* q = static_cast<uint8_t*>(*ws);
  float* a_scale = reinterpret_cast<float*>(q + q_bytes);
  IC_CUDA_RETURN_IF_ERROR(LaunchQuantizeFp8Blocks(q, a_scale, g.a, g.m, m4, g.k, lda, stream_));
  float* c = g.c;
  int ldc_used = ldc;
  if (m4 != g.m) {
    auto cs = Grow(gemm_c_, static_cast<size_t>(m4) * g.n * sizeof(float));
    if (!cs.ok()) return cs.status();
    c = static_cast<float*>(*cs);
    ldc_used = g.n;
    if (g.beta != 0.0f) {
      IC_CUDA_RETURN_IF_ERROR(LaunchCopy2D(c, g.c, g.m, g.n, ldc_used, ldc, /*accumulate=*/false, stream_));
    }
  }
  GemmKey key{m4, g.n, g.k, g.k, ldb, ldc_used, 1, 0, 0, 0, /*bt=*/true, g.beta == 0.0f,
              PointerAlignment(q), PointerAlignment(g.b_fp8), PointerAlignment(c), /*bf16=*/false, /*fp8=*/true};
  IC_RETURN_IF_ERROR_(RunGemmPlan(key, m4, g.alpha, g.beta, q, g.b_fp8, c, a_scale, g.b_scale));
  if (m4 != g.m) {
    IC_CUDA_RETURN_IF_ERROR(LaunchCopy2D(g.c, c, g.m, g.n, ldc, ldc_used, /*accumulate=*/false, stream_));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
absl::Status CudaBackend::Embedding(const EmbeddingArgs& a) {
  constexpr const char* op = "Embedding";
  IC_ARG_CHECK(a.tokens >= 0 && a.dim >= 0 && a.vocab >= 0, op, "negative size");
  if (a.tokens == 0 || a.dim == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.out != nullptr && a.table != nullptr && a.ids != nullptr, op, "null pointer");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  IC_CUDA_RETURN_IF_ERROR(
      LaunchEmbedding(a.out, a.table, a.ids, a.tokens, a.dim, a.vocab, SyncErrorSlot(), stream_));
  return CheckSyncErrorUnlessCapturing(op);
}

absl::Status CudaBackend::Norm(const NormArgs& a, bool layer_norm, const char* op) {
  IC_ARG_CHECK(a.rows >= 0 && a.dim >= 0, op, "negative size rows=", a.rows, " dim=", a.dim);
  const int in_stride = a.in_stride != 0 ? a.in_stride : a.dim;
  const int out_stride = a.out_stride != 0 ? a.out_stride : a.dim;
  IC_ARG_CHECK(in_stride >= a.dim, op, "in_stride = ", in_stride, " < dim = ", a.dim);
  IC_ARG_CHECK(out_stride >= a.dim, op, "out_stride = ", out_stride, " < dim = ", a.dim);
  if (a.rows == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.dim > 0, op, "dim = 0 with rows = ", a.rows);
  IC_ARG_CHECK(a.eps >= 0.0f && a.eps < INFINITY, op, "eps = ", a.eps, " is not a finite value ≥ 0");
  IC_ARG_CHECK(a.out != nullptr && a.in != nullptr && a.weight != nullptr, op,
               "out, in or weight is null");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  IC_CUDA_RETURN_IF_ERROR(LaunchNorm(a.out, a.in, a.weight, layer_norm ? a.bias : nullptr, a.rows, a.dim,
                                     in_stride, out_stride, a.eps, layer_norm, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::Rope(const RopeArgs& a) {
  constexpr const char* op = "Rope";
  IC_ARG_CHECK(a.tokens >= 0 && a.heads >= 0, op, "negative size");
  IC_ARG_CHECK(a.rot_dim >= 0 && a.rot_dim % 2 == 0, op, "rot_dim = ", a.rot_dim, " must be even");
  IC_ARG_CHECK(a.rot_offset >= 0 && a.token_stride >= 0 && a.head_stride >= 0, op,
               "rot_offset, token_stride and head_stride must be ≥ 0");
  if (a.tokens == 0 || a.heads == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.rot_dim > 0, op, "rot_dim = ", a.rot_dim, " must be positive and even");
  IC_ARG_CHECK(a.heads == 1 || a.head_stride >= a.rot_offset + a.rot_dim, op, "head_stride = ",
               a.head_stride, " is smaller than rot_offset + rot_dim = ", a.rot_offset + a.rot_dim);
  IC_ARG_CHECK(a.attention_scaling > -INFINITY && a.attention_scaling < INFINITY, op,
               "attention_scaling = ", a.attention_scaling, " is not finite");
  IC_ARG_CHECK(a.x != nullptr && a.positions != nullptr && a.inv_freq != nullptr, op, "null pointer");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  IC_CUDA_RETURN_IF_ERROR(LaunchRope(a.x, a.positions, a.inv_freq, a.tokens, a.heads, a.token_stride,
                                     a.head_stride, a.rot_offset, a.rot_dim, a.attention_scaling,
                                     a.style == RopeStyle::kInterleaved, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::SiluMul(const SiluMulArgs& a) {
  constexpr const char* op = "SiluMul";
  IC_ARG_CHECK(a.tokens >= 0 && a.dim >= 0, op, "negative size");
  const int gs = a.gate_stride != 0 ? a.gate_stride : a.dim;
  const int us = a.up_stride != 0 ? a.up_stride : a.dim;
  const int os = a.out_stride != 0 ? a.out_stride : a.dim;
  IC_ARG_CHECK(gs >= a.dim && us >= a.dim && os >= a.dim, op, "a stride is smaller than dim = ", a.dim);
  if (a.tokens == 0 || a.dim == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.out != nullptr && a.gate != nullptr && a.up != nullptr, op, "null pointer");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  IC_CUDA_RETURN_IF_ERROR(LaunchSiluMul(a.out, a.gate, a.up, a.tokens, a.dim, gs, us, os, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::Copy2D(const Copy2DArgs& a) {
  constexpr const char* op = "Copy2D";
  IC_ARG_CHECK(a.rows >= 0 && a.cols >= 0, op, "negative size");
  const int ds = a.dst_stride != 0 ? a.dst_stride : a.cols;
  const int ss = a.src_stride != 0 ? a.src_stride : a.cols;
  IC_ARG_CHECK(ds >= a.cols, op, "dst_stride = ", ds, " < cols = ", a.cols);
  IC_ARG_CHECK(ss >= a.cols, op, "src_stride = ", ss, " < cols = ", a.cols);
  if (a.rows == 0 || a.cols == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.dst != nullptr && a.src != nullptr, op, "null pointer");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  IC_CUDA_RETURN_IF_ERROR(LaunchCopy2D(a.dst, a.src, a.rows, a.cols, ds, ss, a.accumulate, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::CacheWrite(const CacheWriteArgs& a) {
  constexpr const char* op = "CacheWrite";
  IC_ARG_CHECK(a.tokens >= 0 && a.dim >= 0 && a.num_slots >= 0, op, "negative size");
  const int cs = a.cache_stride != 0 ? a.cache_stride : a.dim;
  const int ss = a.src_stride != 0 ? a.src_stride : a.dim;
  IC_ARG_CHECK(cs >= a.dim, op, "cache_stride = ", cs, " < dim = ", a.dim);
  IC_ARG_CHECK(ss >= a.dim, op, "src_stride = ", ss, " < dim = ", a.dim);
  if (a.tokens == 0 || a.dim == 0) return absl::OkStatus();
  IC_ARG_CHECK((a.cache != nullptr) + (a.cache_bf16 != nullptr) + (a.cache_fp8 != nullptr) == 1, op,
               "exactly one of cache, cache_bf16 and cache_fp8 must be set");
  IC_ARG_CHECK((a.cache_fp8 != nullptr) == (a.scale != nullptr), op,
               "scale goes with cache_fp8 (one F32 scale per slot), and only with it");
  IC_ARG_CHECK(a.src != nullptr && a.slots != nullptr, op, "null pointer");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (a.cache_fp8 != nullptr) {
    IC_CUDA_RETURN_IF_ERROR(LaunchCacheWriteFp8(a.cache_fp8, a.scale, a.src, a.slots, a.tokens, a.dim, cs, ss,
                                                a.num_slots, &dev_err_[1], stream_));
    return absl::OkStatus();
  }
  if (a.cache_bf16 != nullptr) {
    IC_CUDA_RETURN_IF_ERROR(LaunchCacheWriteBf16(a.cache_bf16, a.src, a.slots, a.tokens, a.dim, cs, ss,
                                                 a.num_slots, &dev_err_[1], stream_));
    return absl::OkStatus();
  }
  IC_CUDA_RETURN_IF_ERROR(LaunchCacheWrite(a.cache, a.src, a.slots, a.tokens, a.dim, cs, ss, a.num_slots,
                                           &dev_err_[1], stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::CheckLayout(const TokenLayout& l, const char* op) {
  IC_ARG_CHECK(l.tokens >= 0 && l.num_seqs >= 0 && l.max_blocks_per_seq >= 0, op,
               "layout: negative size");
  IC_ARG_CHECK(l.block_size > 0, op, "layout.block_size = ", l.block_size, " must be positive");
  if (l.tokens > 0) {
    IC_ARG_CHECK(l.token_seq != nullptr && l.token_pos != nullptr && l.block_tables != nullptr, op,
                 "layout: null pointer");
    IC_ARG_CHECK(l.num_seqs > 0, op, "layout.num_seqs = ", l.num_seqs, " must be positive");
    IC_ARG_CHECK(l.max_blocks_per_seq > 0, op, "layout.max_blocks_per_seq = ", l.max_blocks_per_seq,
                 " must be positive");
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Attention(const AttentionArgs& a) {
  constexpr const char* op = "Attention";
  IC_RETURN_IF_ERROR_(CheckLayout(a.layout, op));
  IC_ARG_CHECK(a.q_heads > 0 && a.kv_heads > 0 && a.q_heads % a.kv_heads == 0, op, "q_heads = ",
               a.q_heads, " must be a positive multiple of kv_heads = ", a.kv_heads);
  IC_ARG_CHECK(a.qk_dim > 0 && a.v_dim > 0, op, "qk_dim = ", a.qk_dim, ", v_dim = ", a.v_dim,
               " must be positive");
  const int q_stride = a.q_stride != 0 ? a.q_stride : a.q_heads * a.qk_dim;
  const int k_stride = a.k_stride != 0 ? a.k_stride : a.kv_heads * a.qk_dim;
  const int v_stride = a.v_stride != 0 ? a.v_stride : a.kv_heads * a.v_dim;
  IC_ARG_CHECK(q_stride >= a.q_heads * a.qk_dim, op, "q_stride = ", q_stride, " too small");
  IC_ARG_CHECK(k_stride >= a.kv_heads * a.qk_dim, op, "k_stride = ", k_stride, " too small");
  IC_ARG_CHECK(v_stride >= a.kv_heads * a.v_dim, op, "v_stride = ", v_stride, " too small");
  if (a.topk != nullptr) IC_ARG_CHECK(a.topk_k > 0, op, "topk_k = ", a.topk_k, " must be positive");
  IC_ARG_CHECK(a.probs == nullptr || a.topk != nullptr, op, "probs needs topk (sparse attention)");
  IC_ARG_CHECK(a.precision == Precision::kF32 || a.precision == Precision::kBF16, op, "precision = ",
               static_cast<int>(a.precision), " is not one of kF32 (0), kBF16 (1)");
  const size_t shared = AttentionSharedBytes(a.qk_dim, a.v_dim);
  IC_ARG_CHECK(shared <= max_shared_, op, "qk_dim = ", a.qk_dim, " / v_dim = ", a.v_dim,
               " need ", shared, " bytes of shared memory (device limit ", max_shared_, ")");
  const bool cache16 = a.k_cache_bf16 != nullptr || a.v_cache_bf16 != nullptr;
  IC_ARG_CHECK(!cache16 || (a.k_cache_bf16 != nullptr && a.v_cache_bf16 != nullptr && a.k_cache == nullptr &&
                            a.v_cache == nullptr),
               op, "give k_cache and v_cache, or k_cache_bf16 and v_cache_bf16");
  IC_ARG_CHECK(!cache16 || a.precision == Precision::kBF16, op, "a BF16 KV cache needs precision kBF16");
  if (a.layout.tokens == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.out != nullptr && a.q != nullptr && (cache16 || (a.k_cache != nullptr && a.v_cache != nullptr)),
               op, "null pointer");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  // Scratch: [lse (when probs is wanted without lse) | split-K partial states].
  const int max_keys = a.topk != nullptr ? a.topk_k : a.layout.max_blocks_per_seq * a.layout.block_size;
  AttentionParams p{a.out, a.lse, a.probs, a.q, a.k_cache, a.v_cache, a.k_cache_bf16, a.v_cache_bf16,
                    q_stride, k_stride, v_stride,
                    a.q_heads, a.kv_heads, a.qk_dim, a.v_dim, a.num_slots, a.scale, Dev(a.layout),
                    a.topk, a.topk_k, a.precision == Precision::kBF16};
  const int splits = AttentionUsesTensorCores(p) ? AttentionSplitsTc(a.layout.tokens * ((a.q_heads + 31) / 32), a.topk_k)
                                                 : AttentionSplits(a.layout.tokens, a.q_heads, a.kv_heads, max_keys);
  const size_t lse_bytes = (a.probs != nullptr && a.lse == nullptr)
                               ? (sizeof(float) * a.layout.tokens * a.q_heads + 255) / 256 * 256
                               : 0;
  const size_t part_bytes = AttentionPartialBytes(a.layout.tokens, a.q_heads, a.v_dim, splits);
  float* lse_ws = nullptr;
  float* part_ws = nullptr;
  if (lse_bytes + part_bytes > 0) {
    auto ws = Scratch(lse_bytes + part_bytes);
    if (!ws.ok()) return ws.status();
    char* base = static_cast<char*>(*ws);
    if (lse_bytes > 0) lse_ws = reinterpret_cast<float*>(base);
    if (part_bytes > 0) part_ws = reinterpret_cast<float*>(base + lse_bytes);
  }
  IC_CUDA_RETURN_IF_ERROR(LaunchAttention(p, lse_ws, part_ws, splits, &dev_err_[1], stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::IndexerTopk(const IndexerArgs& a) {
  constexpr const char* op = "IndexerTopk";
  IC_RETURN_IF_ERROR_(CheckLayout(a.layout, op));
  IC_ARG_CHECK(a.heads > 0 && a.head_dim > 0, op, "heads = ", a.heads, ", head_dim = ", a.head_dim,
               " must be positive");
  IC_ARG_CHECK(a.k > 0, op, "k = ", a.k, " must be positive");
  IC_ARG_CHECK(a.precision == Precision::kF32 || a.precision == Precision::kBF16 || a.precision == Precision::kFP8,
               op, "precision = ", static_cast<int>(a.precision), " is not one of kF32 (0), kBF16 (1), kFP8 (2)");
  const int k_stride = a.k_stride != 0 ? a.k_stride : a.head_dim;
  if (a.precision == Precision::kFP8) {
    IC_ARG_CHECK(IndexerFp8Supported(a.heads, a.head_dim, k_stride, a.k_cache_fp8), op,
                 "the FP8 indexer supports 8, 16, 32 or 64 heads of dimension 64 or 128 with a k_stride that is a "
                 "multiple of 16 and a 16-byte aligned cache; got heads = ", a.heads, ", head_dim = ", a.head_dim,
                 ", k_stride = ", k_stride);
  }
  IC_ARG_CHECK(k_stride >= a.head_dim, op, "k_stride = ", k_stride, " < head_dim = ", a.head_dim);
  IC_ARG_CHECK(a.scores == nullptr || a.scores_stride > 0, op, "scores_stride = ", a.scores_stride,
               " must be positive when scores is set");
  const size_t shared = IndexerSharedBytes(a.heads, a.head_dim);
  IC_ARG_CHECK(shared <= max_shared_, op, "heads × head_dim = ", a.heads, " × ", a.head_dim, " needs ",
               shared, " bytes of shared memory (device limit ", max_shared_, ")");
  if (a.layout.tokens == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.indices != nullptr && a.q != nullptr && a.w != nullptr, op, "null pointer");
  IC_ARG_CHECK((a.k_cache != nullptr) + (a.k_cache_bf16 != nullptr) + (a.k_cache_fp8 != nullptr) == 1, op,
               "exactly one of k_cache, k_cache_bf16 and k_cache_fp8 must be set");
  IC_ARG_CHECK(a.k_cache_bf16 == nullptr || a.precision == Precision::kBF16, op,
               "k_cache_bf16 (a BF16 index-K cache) needs precision kBF16");
  IC_ARG_CHECK((a.k_cache_fp8 != nullptr) == (a.precision == Precision::kFP8), op,
               "precision kFP8 reads an FP8 index-K cache (k_cache_fp8 + k_scale), and k_cache_fp8 needs kFP8");
  IC_ARG_CHECK((a.k_cache_fp8 != nullptr) == (a.k_scale != nullptr), op,
               "k_scale goes with k_cache_fp8 (one F32 scale per slot)");
  const int max_len = a.layout.max_blocks_per_seq * a.layout.block_size;
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (max_len == 0) {
    IC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(a.indices, 0xff, sizeof(int32_t) * a.layout.tokens * a.k,
                                            stream_));
    return absl::OkStatus();
  }
  // Query tiles: [rows, max_len] scores at a time (max_len bounds every valid position).
  const int64_t by_budget = static_cast<int64_t>(indexer_tile_bytes_ / (sizeof(float) * max_len));
  const int tile = static_cast<int>(std::clamp<int64_t>(by_budget, 1, std::min(a.layout.tokens, 65535)));
  const size_t score_bytes = (sizeof(float) * static_cast<size_t>(tile) * max_len + 255) / 256 * 256;
  const size_t topk_bytes = RowTopkScratchBytes(tile, max_len);
  auto ws_or = Scratch(score_bytes + topk_bytes);
  if (!ws_or.ok()) return ws_or.status();
  float* ws = static_cast<float*>(*ws_or);
  void* topk_ws = static_cast<char*>(*ws_or) + score_bytes;
  IndexerParams p{a.q,        a.w, a.k_cache, k_stride, a.num_slots, a.heads, a.head_dim, a.k, Dev(a.layout),
                  a.precision == Precision::kBF16, a.k_cache_bf16, a.k_cache_fp8, a.k_scale};
  const bool all_rows = a.scores != nullptr;
  for (int t0 = 0; t0 < a.layout.tokens; t0 += tile) {
    const int rows = std::min(tile, a.layout.tokens - t0);
    IC_CUDA_RETURN_IF_ERROR(LaunchIndexerScores(ws, p, t0, rows, max_len, all_rows, &dev_err_[1], stream_));
    if (all_rows) {
      IC_CUDA_RETURN_IF_ERROR(LaunchIndexerCopyScores(a.scores, a.scores_stride, ws, max_len,
                                                      a.layout.token_pos, t0, rows, stream_));
    }
    IC_CUDA_RETURN_IF_ERROR(LaunchRowTopk(a.indices + static_cast<int64_t>(t0) * a.k, ws, max_len,
                                          nullptr, a.layout.token_pos + t0, rows, max_len, a.k, nullptr, stream_,
                                          topk_ws, RowTopkScratchBytes(rows, max_len)));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Topk(const TopkArgs& a) {
  constexpr const char* op = "Topk";
  IC_ARG_CHECK(a.rows >= 0, op, "rows = ", a.rows, " is negative");
  IC_ARG_CHECK(a.k >= 0, op, "k = ", a.k, " is negative");
  IC_ARG_CHECK(a.stride >= 0, op, "stride = ", a.stride, " is negative");
  if (a.rows == 0 || a.k == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.out != nullptr && a.lengths != nullptr, op, "out or lengths is null");
  IC_ARG_CHECK(a.scores != nullptr || a.stride == 0, op, "scores is null");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const size_t topk_bytes = RowTopkScratchBytes(a.rows, a.stride);
  void* topk_ws = nullptr;
  if (topk_bytes > 0) {
    auto ws_or = Scratch(topk_bytes);
    if (!ws_or.ok()) return ws_or.status();
    topk_ws = *ws_or;
  }
  IC_CUDA_RETURN_IF_ERROR(LaunchRowTopk(a.out, a.scores, a.stride, a.lengths, nullptr, a.rows, a.stride,
                                        a.k, &dev_err_[1], stream_, topk_ws, topk_bytes));
  return absl::OkStatus();
}

absl::Status CudaBackend::MoeRoute(const MoeRouteArgs& a) {
  constexpr const char* op = "MoeRoute";
  IC_ARG_CHECK(a.tokens >= 0, op, "tokens = ", a.tokens, " is negative");
  IC_ARG_CHECK(a.experts > 0, op, "experts = ", a.experts, " must be positive");
  IC_ARG_CHECK(a.n_group >= 1 && a.n_group <= 64 && a.experts % a.n_group == 0, op, "n_group = ",
               a.n_group, " must divide experts = ", a.experts, " (and be ≤ 64)");
  IC_ARG_CHECK(a.topk_group >= 1 && a.topk_group <= a.n_group, op, "topk_group = ", a.topk_group,
               " must be in [1, n_group = ", a.n_group, "]");
  IC_ARG_CHECK(a.top_k >= 1 && a.top_k <= a.topk_group * (a.experts / a.n_group), op, "top_k = ",
               a.top_k, " must be in [1, experts in the kept groups]");
  if (a.tokens == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.expert_ids != nullptr && a.expert_weights != nullptr && a.logits != nullptr, op,
               "null pointer");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  IC_CUDA_RETURN_IF_ERROR(LaunchMoeRoute(a.expert_ids, a.expert_weights, a.logits, a.bias, a.tokens,
                                         a.experts, a.top_k, a.n_group, a.topk_group, a.norm_topk_prob,
                                         a.routed_scaling_factor, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::MoeExperts(const MoeExpertsArgs& a) {
  IC_RETURN_IF_ERROR_(ValidateMoeExperts(a));
  if (a.tokens == 0 || a.hidden == 0 || a.top_k == 0) return absl::OkStatus();
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const size_t act_bytes = (static_cast<size_t>(a.tokens) * (a.top_k + 1) * a.inter +
                           (a.fp8 ? static_cast<size_t>(a.tokens) * a.hidden : 0)) * sizeof(float);
  auto act = Scratch(act_bytes);
  if (!act.ok()) return act.status();
  const float* const shared_scales[3] = {a.shared_gate_scale, a.shared_up_scale, a.shared_down_scale};
  IC_CUDA_RETURN_IF_ERROR(LaunchMoeExperts(a.out, static_cast<float*>(*act), a.x, a.expert_ids, a.expert_weights,
                                           a.weights, a.shared_gate, a.shared_up, a.shared_down, shared_scales, a.bf16,
                                           a.fp8, a.tokens, a.hidden, a.inter, a.top_k, a.experts, &dev_err_[1],
                                           stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::GatherRows(const RowsArgs& a) {
  constexpr const char* op = "GatherRows";
  IC_ARG_CHECK(a.count >= 0 && a.dim >= 0, op, "negative size");
  if (a.count == 0 || a.dim == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.out != nullptr && a.in != nullptr && a.rows != nullptr, op, "null pointer");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  IC_CUDA_RETURN_IF_ERROR(LaunchGatherRows(a.out, a.in, a.rows, a.count, a.dim, &dev_err_[1], stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::ScatterAddRows(const RowsArgs& a) {
  constexpr const char* op = "ScatterAddRows";
  IC_ARG_CHECK(a.count >= 0 && a.dim >= 0, op, "negative size");
  if (a.count == 0 || a.dim == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.out != nullptr && a.in != nullptr && a.rows != nullptr, op, "null pointer");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  IC_CUDA_RETURN_IF_ERROR(LaunchScatterAddRows(a.out, a.in, a.rows, a.scale, a.count, a.dim, &dev_err_[1], stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::CrossEntropy(const CrossEntropyArgs& a) {
  constexpr const char* op = "CrossEntropy";
  IC_ARG_CHECK(a.tokens >= 0 && a.vocab >= 0, op, "negative size");
  const int stride = a.stride != 0 ? a.stride : a.vocab;
  IC_ARG_CHECK(stride >= a.vocab, op, "stride = ", stride, " < vocab = ", a.vocab);
  if (a.tokens == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.vocab > 0, op, "vocab must be positive");
  IC_ARG_CHECK(a.loss != nullptr && a.logits != nullptr && a.targets != nullptr, op, "null pointer");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  IC_CUDA_RETURN_IF_ERROR(LaunchCrossEntropy(a.loss, a.logits, a.targets, a.tokens, a.vocab, stride,
                                             SyncErrorSlot(), stream_));
  return CheckSyncErrorUnlessCapturing(op);
}

absl::Status CudaBackend::Hadamard(const HadamardArgs& a) {
  constexpr const char* op = "Hadamard";
  IC_ARG_CHECK(a.rows >= 0, op, "rows = ", a.rows, " is negative");
  IC_ARG_CHECK(a.dim >= 1 && a.dim <= 1024 && (a.dim & (a.dim - 1)) == 0, op, "dim = ", a.dim,
               " must be a power of two in [1, 1024]");
  const int stride = a.stride != 0 ? a.stride : a.dim;
  IC_ARG_CHECK(stride >= a.dim, op, "stride = ", stride, " < dim = ", a.dim);
  if (a.rows == 0) return absl::OkStatus();
  IC_ARG_CHECK(a.x != nullptr, op, "x is null");
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  IC_CUDA_RETURN_IF_ERROR(LaunchHadamard(a.x, a.rows, a.dim, stride, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::IndexerDistill(const IndexerDistillArgs& a) {
  IC_RETURN_IF_ERROR_(ValidateIndexerDistill(a));
  if (a.tokens == 0) return absl::OkStatus();
  IC_ARG_CHECK(IndexerDistillSharedBytes(a.head_dim) <= max_shared_, "IndexerDistill", "head_dim = ", a.head_dim,
               " needs ", IndexerDistillSharedBytes(a.head_dim), " bytes of shared memory; this GPU has ",
               max_shared_);
  IC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  auto scratch = Scratch(IndexerDistillScratchBytes(a.tokens, a.heads, a.head_dim));
  if (!scratch.ok()) return scratch.status();
  IC_CUDA_RETURN_IF_ERROR(LaunchIndexerDistill(a.kl, a.grad_q, a.grad_k, a.grad_w, a.q, a.k, a.w, a.p, a.tokens,
                                               a.heads, a.head_dim, static_cast<float*>(*scratch), stream_));
  return absl::OkStatus();
}

}  // namespace

int VisibleDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not an error for the caller
    return 0;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device_ordinal) {
  const int n = VisibleDeviceCount();
  if (n == 0) return absl::UnavailableError("CUDA backend: no GPU is visible to this process");
  if (device_ordinal < 0 || device_ordinal >= n) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA backend: device_ordinal = ", device_ordinal,
                                                   " is outside [0, ", n, ")"));
  }
  auto backend = std::make_unique<CudaBackend>(device_ordinal);
  absl::Status s = backend->Init();
  if (!s.ok()) return s;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace ic::kernels::cuda
