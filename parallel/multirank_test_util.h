// Test helper: run one function per rank on its own thread, with a hang guard.
//
//   auto comms = InProcessGroup::Create(4).value();
//   RunRanks(comms, [&](Communicator& c) { ASSERT_TRUE(c.Barrier().ok()); });
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "parallel/communicator.h"

namespace ic::parallel::testing {

// Runs fn(rank) on world threads and joins them. If they have not all returned after `guard`, the test
// binary aborts with a message (a hang is a failure, never a stuck CI job).
inline void RunThreads(int world, const std::function<void(int)>& fn,
                       std::chrono::seconds guard = std::chrono::seconds(120)) {
  std::mutex mu;
  std::condition_variable cv;
  int finished = 0;
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      fn(r);
      std::lock_guard<std::mutex> lock(mu);
      ++finished;
      cv.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, guard, [&] { return finished == world; })) {
      std::fprintf(stderr, "RunThreads: %d of %d ranks still running after %lld s: hang\n", world - finished, world,
                   static_cast<long long>(guard.count()));
      std::abort();
    }
  }
  for (std::thread& t : threads) t.join();
}

inline void RunRanks(const std::vector<std::unique_ptr<Communicator>>& comms,
                     const std::function<void(Communicator&)>& fn,
                     std::chrono::seconds guard = std::chrono::seconds(120)) {
  RunThreads(static_cast<int>(comms.size()), [&](int r) { fn(*comms[r]); }, guard);
}

}  // namespace ic::parallel::testing
