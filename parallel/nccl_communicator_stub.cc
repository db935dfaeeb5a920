// NCCL Communicator stub: built into ic_parallel_nccl when CUDA or NCCL is not found, so callers link
// the same target everywhere and get Unimplemented at run time.
#include "parallel/nccl_communicator.h"

namespace ic::parallel {
namespace {
absl::Status NoNccl() {
  return absl::UnimplementedError(
      "NcclCommunicator: this build has no NCCL (CUDA toolkit or nccl.h/libnccl not found)");
}
}  // namespace

bool NcclAvailable() { return false; }

absl::StatusOr<std::string> NcclCommunicator::UniqueId() { return NoNccl(); }

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(std::string_view, int, int,
                                                                           const NcclOptions&) {
  return NoNccl();
}

// Never constructed in this build; the remaining members exist only to satisfy the vtable.
struct NcclCommunicator::Impl {};
NcclCommunicator::~NcclCommunicator() = default;
void* NcclCommunicator::stream() const { return nullptr; }
void NcclCommunicator::set_stream(void*) {}
int NcclCommunicator::device() const { return -1; }
absl::Status NcclCommunicator::Wait() { return NoNccl(); }
void NcclCommunicator::Abort() {}
absl::Status NcclCommunicator::DoAllGather(const void*, void*, size_t) { return NoNccl(); }
absl::Status NcclCommunicator::DoAllReduceSum(const float*, float*, size_t) { return NoNccl(); }
absl::Status NcclCommunicator::DoReduceScatterSum(const float*, float*, size_t) { return NoNccl(); }
absl::Status NcclCommunicator::DoBroadcast(const void*, void*, size_t, int) { return NoNccl(); }
absl::Status NcclCommunicator::DoAllToAllV(const void*, absl::Span<const size_t>, absl::Span<const size_t>, void*,
                                           absl::Span<const size_t>, absl::Span<const size_t>) {
  return NoNccl();
}
absl::Status NcclCommunicator::DoBarrier() { return NoNccl(); }
absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::DoSplit(int, int) { return NoNccl(); }

}  // namespace ic::parallel
