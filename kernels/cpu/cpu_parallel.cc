// A small persistent thread pool for the CPU backend's non-BLAS loops (softmax, sparse dots, top-k).
// Workers sleep on a condition variable between jobs; the caller takes chunks too. IC_CPU_THREADS
// overrides the thread count (default: hardware concurrency, at most 16).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "kernels/cpu/cpu_internal.h"

namespace ic::kernels::cpu::internal {
namespace {

thread_local bool tls_in_pool = false;

class Pool {
 public:
  explicit Pool(int threads) : threads_(std::max(1, threads)) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  }

  int threads() const { return threads_; }

  void Run(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> run_lock(run_mu_, std::try_to_lock);
    if (!run_lock.owns_lock() || workers_.empty()) {  // another caller holds the pool: run inline
      fn(0, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      chunk_ = chunk;
      next_.store(0);
      active_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    work_cv_.notify_all();
    tls_in_pool = true;
    DoChunks();
    tls_in_pool = false;
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return active_ == 0; });
    fn_ = nullptr;
  }

 private:
  void DoChunks() {
    for (;;) {
      const int64_t begin = next_.fetch_add(chunk_);
      if (begin >= n_) break;
      (*fn_)(begin, std::min(n_, begin + chunk_));
    }
  }

  void WorkerLoop() {
    tls_in_pool = true;
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
      }
      DoChunks();
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (--active_ == 0) done_cv_.notify_one();
      }
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  uint64_t generation_ = 0;
  int active_ = 0;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
};

int DefaultThreads() {
  if (const char* env = std::getenv("IC_CPU_THREADS")) {
    const int v = std::atoi(env);
    if (v >= 1) return std::min(v, 256);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return std::clamp(static_cast<int>(hw == 0 ? 1 : hw), 1, 16);
}

Pool& GetPool() {
  static Pool* pool = new Pool(DefaultThreads());  // never destroyed: workers sleep until exit
  return *pool;
}

}  // namespace

int NumThreads() { return GetPool().threads(); }

void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(1, min_chunk);
  Pool& pool = GetPool();
  if (tls_in_pool || pool.threads() == 1 || n <= min_chunk) {
    fn(0, n);
    return;
  }
  const int64_t max_chunks = static_cast<int64_t>(pool.threads()) * 4;
  const int64_t chunk = std::max(min_chunk, (n + max_chunks - 1) / max_chunks);
  pool.Run(n, chunk, fn);
}

}  // namespace ic::kernels::cpu::internal
