// NcclLocalGroup (nccl_communicator.h): every rank of a group whose ranks are threads of this process.
// Built into ic_parallel_nccl with NCCL or with the stub (whose UniqueId makes it Unimplemented).
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/nccl_communicator.h"

namespace ic::parallel {

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> NcclLocalGroup(int world, const NcclOptions& options) {
  if (world < 1) return absl::InvalidArgumentError(absl::StrCat("NcclLocalGroup: world = ", world, " < 1"));
  absl::StatusOr<std::string> id = NcclCommunicator::UniqueId();
  if (!id.ok()) return id.status();
  std::vector<std::unique_ptr<Communicator>> comms(world);
  std::vector<absl::Status> status(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {  // NCCL init returns once every rank has joined: join them concurrently
    threads.emplace_back([&, r] {
      NcclOptions o = options;
      o.device = r;
      absl::StatusOr<std::unique_ptr<NcclCommunicator>> c = NcclCommunicator::Create(*id, r, world, o);
      if (c.ok()) {
        comms[r] = *std::move(c);
      } else {
        status[r] = c.status();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    if (!status[r].ok()) return absl::Status(status[r].code(), absl::StrCat("rank ", r, ": ", status[r].message()));
  }
  return comms;
}

}  // namespace ic::parallel
