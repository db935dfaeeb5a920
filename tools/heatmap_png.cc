// PNG heatmap through libpng (see heatmap_png.h).
#include "tools/heatmap_png.h"

#include <png.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"

namespace ic::cli {
namespace {

// 0 → white, 0.5 → (66, 133, 244) blue, 1 → (8, 29, 88) dark blue; linear in between.
void Color(double v, png_byte* rgb) {
  v = std::clamp(v, 0.0, 1.0);
  const double lo[3] = {255, 255, 255}, mid[3] = {66, 133, 244}, hi[3] = {8, 29, 88};
  for (int c = 0; c < 3; ++c) {
    const double x = v < 0.5 ? lo[c] + (mid[c] - lo[c]) * (v / 0.5) : mid[c] + (hi[c] - mid[c]) * ((v - 0.5) / 0.5);
    rgb[c] = static_cast<png_byte>(std::lround(x));
  }
}

}  // namespace

absl::Status WriteHeatmapPng(const std::string& path, const std::vector<double>& values, int n, int cell) {
  if (n < 1 || cell < 1 || values.size() != static_cast<size_t>(n) * n || static_cast<int64_t>(n) * cell > 16384) {
    return absl::InvalidArgumentError(absl::StrCat("heatmap: ", values.size(), " values for a ", n, "x", n,
                                                   " matrix of ", cell, "-pixel cells"));
  }
  struct stat existing;
  if (stat(path.c_str(), &existing) == 0 && !S_ISREG(existing.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": exists and is not a regular file"));
  }
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (f == nullptr) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png != nullptr ? png_create_info_struct(png) : nullptr;
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    return absl::ResourceExhaustedError("heatmap: libpng could not allocate its structures");
  }
  const int side = n * cell;
  // Every object with a destructor exists before setjmp: a longjmp must not skip one.
  std::vector<png_byte> row(static_cast<size_t>(side) * 3);
  const std::vector<png_byte> grid_line(row.size(), 230);
  if (setjmp(png_jmpbuf(png))) {  // libpng reports errors by longjmp
    png_destroy_write_struct(&png, &info);
    return absl::DataLossError(absl::StrCat(path, ": libpng failed to write the heatmap"));
  }
  png_init_io(png, f.get());
  png_set_IHDR(png, info, side, side, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      png_byte rgb[3];
      Color(values[static_cast<size_t>(i) * n + j], rgb);
      for (int x = 0; x < cell; ++x) {
        // A one-pixel light grid line at each cell's right and bottom edge.
        const bool grid = x == cell - 1 && cell >= 4;
        std::copy(rgb, rgb + 3, &row[(static_cast<size_t>(j) * cell + x) * 3]);
        if (grid) std::fill_n(&row[(static_cast<size_t>(j) * cell + x) * 3], 3, static_cast<png_byte>(230));
      }
    }
    for (int y = 0; y < cell; ++y) {
      png_write_row(png, const_cast<png_byte*>(y == cell - 1 && cell >= 4 ? grid_line.data() : row.data()));
    }
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  if (std::fflush(f.get()) != 0) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace ic::cli
