// The block-scaled FP8 weight layout both backends share (GemmArgs::b_fp8, MoeExpertsArgs::fp8; DeepSeek-V3's
// quantization_config weight_block_size [128, 128]): E4M3 bytes with one F32 scale per 128 × 128 block, the
// scales of a weight with `cols` in-features in rows of Fp8ScaleLd(cols) floats — ceil(cols / 128) rounded
// up to a multiple of 4, the stride cuBLASLt's BLK128x128_32F scales imply (measured on the H200,
// docs/results/gpu_kernels.md). No dependencies: the .cu files include it too (constexpr, so device code
// may call it under --expt-relaxed-constexpr).
#pragma once

namespace ic::kernels {

constexpr int kFp8Block = 128;

constexpr int Fp8ScaleLd(int cols) { return ((cols + kFp8Block - 1) / kFp8Block + 3) / 4 * 4; }

}  // namespace ic::kernels
