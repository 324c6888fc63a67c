// Image decoding and preprocessing: the one code path used by predict, eval on image files and
// the server.
//
//   KILN_ASSIGN_OR_RETURN(kiln::data::RgbImage img, kiln::data::DecodeImage(bytes, limits));
//   std::vector<float> chw(3 * 32 * 32);
//   KILN_RETURN_IF_ERROR(kiln::data::PreprocessImage(img, 32, 32, norm, chw.data()));
//
// Formats: JPEG (baseline, progressive, CMYK/YCCK; EXIF orientation applied), PNG (gray, RGB,
// palette, 16-bit, alpha), BMP, WebP, TIFF (decoded by OpenCV) and GIF (first frame, decoded by
// giflib: Debian's OpenCV 4.6 has no GIF reader). Everything becomes 8-bit RGB: grayscale is
// replicated, 16-bit is scaled by 1/257, and alpha (including GIF transparency) is composited
// over white (kAlphaBackground).
//
// Safety: the encoded size is checked first; then the width and height are read from the
// file's own header and checked against `max_pixels` before any pixel buffer is allocated, so
// a decompression bomb costs nothing. Empty, truncated, garbage or unsupported input is an
// InvalidArgument Status naming the problem; a limit is ResourceExhausted. No input can crash
// the process. Thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/data/loader.h"

namespace kiln::data {

inline constexpr uint8_t kAlphaBackground = 255;  // transparent pixels become white

struct ImageLimits {
  int64_t max_encoded_bytes = 16 << 20;  // 16 MiB
  int64_t max_pixels = 40'000'000;       // decoded width * height (e.g. 8000 x 5000)

  Status Validate() const;
};

enum class ImageFormat { kUnknown, kJpeg, kPng, kBmp, kWebp, kGif, kTiff };
std::string_view ImageFormatName(ImageFormat format);

// Recognises the format from its magic bytes.
ImageFormat SniffImageFormat(std::string_view bytes);

struct ImageHeader {
  ImageFormat format = ImageFormat::kUnknown;
  int64_t width = 0;
  int64_t height = 0;
};

// Reads the format and dimensions from the header alone (no decoding).
Result<ImageHeader> ReadImageHeader(std::string_view bytes);

// 8-bit RGB, interleaved (HWC), row-major.
struct RgbImage {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> pixels;  // height * width * 3
};

Result<RgbImage> DecodeImage(std::string_view bytes, const ImageLimits& limits);

// Resizes to height x width (area interpolation when shrinking, bilinear when enlarging; none
// when the size already matches), converts to planar CHW and normalizes with NormalizeImage,
// the training pipeline's own routine. `out` holds 3 * height * width floats.
Status PreprocessImage(const RgbImage& image, int64_t height, int64_t width,
                       const Normalization& norm, float* out);

// Encodes a planar (CHW) 8-bit RGB image, as CIFAR-10 stores it, into `format` (kPng, kJpeg,
// kBmp, kWebp or kTiff) with OpenCV. InvalidArgument for another format or channel count.
Result<std::string> EncodeImage(const uint8_t* chw, int64_t channels, int64_t height, int64_t width,
                                ImageFormat format);

}  // namespace kiln::data
