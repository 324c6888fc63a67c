// Fuzz target: image decoding and preprocessing (data::DecodeImage + PreprocessImage), the path
// every uploaded image takes. Checks beyond "no crash, no sanitizer report":
//   - success: 1 <= width, height; width * height <= max_pixels; pixels.size() == w * h * 3;
//     the header reader agrees on the format and the pixel count (EXIF may swap w and h; a
//     GIF decodes its first frame, whose size may differ from the logical screen's);
//     PreprocessImage to 8x8 and 5x3 succeeds and writes only finite floats;
//   - failure: InvalidArgument or ResourceExhausted (a limit), with a message; never anything
//     else (an Internal error would mean a library threw where it should not).
// The limits are small (64 KiB encoded, 256x256 pixels) so each input is fast and a
// decompression bomb must be caught by the header check.
#include <cmath>
#include <cstdint>
#include <string_view>
#include <vector>

#include "fuzz_check.h"
#include "kiln/data/image.h"

namespace {

using kiln::StatusCode;

void Preprocess(const kiln::data::RgbImage& img, int64_t h, int64_t w) {
  const kiln::data::Normalization norm{{0.5f, 0.5f, 0.5f}, {0.25f, 0.25f, 0.25f}};
  std::vector<float> out(static_cast<size_t>(3 * h * w), NAN);
  const kiln::Status s = kiln::data::PreprocessImage(img, h, w, norm, out.data());
  KILN_FUZZ_CHECK(s.ok(), s.ToString());
  for (float v : out) KILN_FUZZ_CHECK(std::isfinite(v), "non-finite preprocessed value");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  kiln::data::ImageLimits limits;
  limits.max_encoded_bytes = 64 << 10;
  limits.max_pixels = 256 * 256;
  auto img = kiln::data::DecodeImage(bytes, limits);
  if (!img.ok()) {
    const StatusCode c = img.status().code();
    KILN_FUZZ_CHECK(c == StatusCode::kInvalidArgument || c == StatusCode::kResourceExhausted,
                    img.status().ToString());
    KILN_FUZZ_CHECK(!img.status().message().empty(), "empty error message");
    return 0;
  }
  KILN_FUZZ_CHECK(img->width >= 1 && img->height >= 1, "empty image decoded");
  KILN_FUZZ_CHECK(img->width * img->height <= limits.max_pixels, "max_pixels exceeded");
  KILN_FUZZ_CHECK(img->pixels.size() == static_cast<size_t>(img->width * img->height * 3),
                  "pixel buffer size");
  auto header = kiln::data::ReadImageHeader(bytes);
  KILN_FUZZ_CHECK(header.ok(), header.status().ToString());
  KILN_FUZZ_CHECK(header->format == kiln::data::SniffImageFormat(bytes), "format mismatch");
  // A GIF decodes to its first frame, which may differ from the logical screen the header
  // gives (both are checked against max_pixels).
  KILN_FUZZ_CHECK(header->format == kiln::data::ImageFormat::kGif ||
                      header->width * header->height == img->width * img->height,
                  "header says " + std::to_string(header->width) + "x" +
                      std::to_string(header->height) + ", decoded " +
                      std::to_string(img->width) + "x" + std::to_string(img->height));
  Preprocess(*img, 8, 8);  // shrinking (area) for CIFAR-sized inputs
  Preprocess(*img, 5, 3);  // odd sizes, aspect change
  return 0;
}
