// A square matrix of values in [0, 1] as a PNG heatmap (libpng): cell (i, j) is a `cell`-pixel square
// at row i, column j (layer 0 top-left), white at 0 through blue to black at 1; values are clamped.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace ic::cli {

absl::Status WriteHeatmapPng(const std::string& path, const std::vector<double>& values, int n, int cell = 16);

}  // namespace ic::cli
