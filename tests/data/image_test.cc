#include "kiln/data/image.h"

#include <gif_lib.h>
#include <gtest/gtest.h>
#include <jpeglib.h>
#include <zlib.h>

#include <cstdio>  // jpeglib.h needs FILE
#include <cstdlib>
#include <cstring>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>

#include "../test_util.h"

namespace kiln::data {
namespace {

// A real CIFAR-10 test image as an OpenCV BGR matrix, resized to w x h.
cv::Mat TestPicture(int w = 32, int h = 32, int64_t index = 0) {
  const ImageSet& test = testing::SharedDataset().test;
  const uint8_t* chw = test.image(index);
  cv::Mat bgr(32, 32, CV_8UC3);
  for (int y = 0; y < 32; ++y) {
    for (int x = 0; x < 32; ++x) {
      for (int c = 0; c < 3; ++c) bgr.at<cv::Vec3b>(y, x)[2 - c] = chw[c * 1024 + y * 32 + x];
    }
  }
  if (w == 32 && h == 32) return bgr;
  cv::Mat out;
  cv::resize(bgr, out, cv::Size(w, h), 0, 0, cv::INTER_LINEAR);
  return out;
}

std::string Encode(const cv::Mat& m, const std::string& ext, const std::vector<int>& params = {}) {
  std::vector<uint8_t> buf;
  EXPECT_TRUE(cv::imencode(ext, m, buf, params)) << ext;
  return {buf.begin(), buf.end()};
}

// Mean absolute difference between a decoded RGB image and a BGR matrix of the same size.
double MeanAbsDiff(const RgbImage& img, const cv::Mat& bgr) {
  EXPECT_EQ(img.width, bgr.cols);
  EXPECT_EQ(img.height, bgr.rows);
  if (img.width != bgr.cols || img.height != bgr.rows) return 1e9;
  double sum = 0;
  for (int y = 0; y < bgr.rows; ++y) {
    for (int x = 0; x < bgr.cols; ++x) {
      for (int c = 0; c < 3; ++c) {
        sum +=
            std::abs(static_cast<int>(img.pixels[(static_cast<size_t>(y) * bgr.cols + x) * 3 + c]) -
                     static_cast<int>(bgr.at<cv::Vec3b>(y, x)[2 - c]));
      }
    }
  }
  return sum / (bgr.total() * 3.0);
}

TEST(ImageTest, EveryFormatDecodesToTheSamePicture) {
  const cv::Mat pic = TestPicture(48, 40);
  struct Case {
    const char* name;
    std::string bytes;
    ImageFormat format;
    double tolerance;  // mean |diff| per channel; 0 = lossless
  };
  const Case cases[] = {
      {"png", Encode(pic, ".png"), ImageFormat::kPng, 0},
      {"bmp", Encode(pic, ".bmp"), ImageFormat::kBmp, 0},
      {"tiff", Encode(pic, ".tiff"), ImageFormat::kTiff, 0},
      {"webp lossless", Encode(pic, ".webp", {cv::IMWRITE_WEBP_QUALITY, 101}), ImageFormat::kWebp,
       0},
      {"webp lossy", Encode(pic, ".webp", {cv::IMWRITE_WEBP_QUALITY, 90}), ImageFormat::kWebp, 6},
      {"jpeg baseline", Encode(pic, ".jpg", {cv::IMWRITE_JPEG_QUALITY, 95}), ImageFormat::kJpeg, 6},
      {"jpeg progressive",
       Encode(pic, ".jpg", {cv::IMWRITE_JPEG_QUALITY, 95, cv::IMWRITE_JPEG_PROGRESSIVE, 1}),
       ImageFormat::kJpeg, 6},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(SniffImageFormat(c.bytes), c.format);
    auto header = ReadImageHeader(c.bytes);
    KILN_ASSERT_RESULT_OK(header);
    EXPECT_EQ(header->width, 48);
    EXPECT_EQ(header->height, 40);
    auto img = DecodeImage(c.bytes, {});
    KILN_ASSERT_RESULT_OK(img);
    EXPECT_LE(MeanAbsDiff(*img, pic), c.tolerance);
  }
}

// A CMYK JPEG written with libjpeg (OpenCV cannot write one), in the Adobe convention most
// CMYK JPEGs use: stored channels are inverted, so (C, M, Y, K) = (R, G, B, 255) is the picture.
std::string CmykJpeg(const cv::Mat& bgr) {
  jpeg_compress_struct cinfo{};
  jpeg_error_mgr jerr{};
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buf, &size);
  cinfo.image_width = static_cast<JDIMENSION>(bgr.cols);
  cinfo.image_height = static_cast<JDIMENSION>(bgr.rows);
  cinfo.input_components = 4;
  cinfo.in_color_space = JCS_CMYK;
  jpeg_set_defaults(&cinfo);
  jpeg_set_colorspace(&cinfo, JCS_CMYK);
  jpeg_set_quality(&cinfo, 95, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  std::vector<JSAMPLE> row(static_cast<size_t>(bgr.cols) * 4);
  for (int y = 0; y < bgr.rows; ++y) {
    for (int x = 0; x < bgr.cols; ++x) {
      const cv::Vec3b p = bgr.at<cv::Vec3b>(y, x);
      row[x * 4 + 0] = p[2];
      row[x * 4 + 1] = p[1];
      row[x * 4 + 2] = p[0];
      row[x * 4 + 3] = 255;
    }
    JSAMPROW r = row.data();
    jpeg_write_scanlines(&cinfo, &r, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<const char*>(buf), size);
  std::free(buf);
  return out;
}

TEST(ImageTest, CmykJpeg) {
  const cv::Mat pic = TestPicture(40, 24);
  auto img = DecodeImage(CmykJpeg(pic), {});
  KILN_ASSERT_RESULT_OK(img);
  EXPECT_LE(MeanAbsDiff(*img, pic), 8.0);
}

TEST(ImageTest, SixteenBitGrayAndAlphaBecomeEightBitRgb) {
  const cv::Mat pic = TestPicture();
  cv::Mat wide;
  pic.convertTo(wide, CV_16UC3, 257.0);  // v * 257: exactly v again after 1/257
  auto img16 = DecodeImage(Encode(wide, ".png"), {});
  KILN_ASSERT_RESULT_OK(img16);
  EXPECT_EQ(MeanAbsDiff(*img16, pic), 0.0);

  cv::Mat gray;
  cv::cvtColor(pic, gray, cv::COLOR_BGR2GRAY);
  auto g = DecodeImage(Encode(gray, ".png"), {});
  KILN_ASSERT_RESULT_OK(g);
  cv::Mat gray3;
  cv::cvtColor(gray, gray3, cv::COLOR_GRAY2BGR);
  EXPECT_EQ(MeanAbsDiff(*g, gray3), 0.0);

  // Alpha: 255 keeps the color, 0 becomes the white background, 128 blends.
  cv::Mat bgra(1, 3, CV_8UC4);
  bgra.at<cv::Vec4b>(0, 0) = {10, 20, 30, 255};
  bgra.at<cv::Vec4b>(0, 1) = {10, 20, 30, 0};
  bgra.at<cv::Vec4b>(0, 2) = {0, 0, 0, 128};
  auto a = DecodeImage(Encode(bgra, ".png"), {});
  KILN_ASSERT_RESULT_OK(a);
  EXPECT_EQ(a->pixels, (std::vector<uint8_t>{30, 20, 10, 255, 255, 255, 127, 127, 127}));
}

// A palette PNG written by hand (OpenCV cannot write one): 2x1, palette {red, blue}.
std::string PalettePng() {
  auto chunk = [](const std::string& type, const std::string& data) {
    std::string out;
    const uint32_t len = static_cast<uint32_t>(data.size());
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>((len >> s) & 0xff));
    std::string body = type + data;
    out += body;
    const uint32_t crc =
        crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>((crc >> s) & 0xff));
    return out;
  };
  const std::string ihdr("\0\0\0\x02\0\0\0\x01\x08\x03\0\0\0", 13);  // 2x1, 8-bit, palette
  const std::string plte("\xff\0\0\0\0\xff", 6);
  const std::string raw("\0\0\x01", 3);  // filter 0, indices 0 and 1
  uLongf size = compressBound(raw.size());
  std::string z(size, '\0');
  compress(reinterpret_cast<Bytef*>(z.data()), &size, reinterpret_cast<const Bytef*>(raw.data()),
           raw.size());
  z.resize(size);
  return std::string("\x89PNG\r\n\x1a\n", 8) + chunk("IHDR", ihdr) + chunk("PLTE", plte) +
         chunk("IDAT", z) + chunk("IEND", "");
}

TEST(ImageTest, PalettePng) {
  auto img = DecodeImage(PalettePng(), {});
  KILN_ASSERT_RESULT_OK(img);
  EXPECT_EQ(img->pixels, (std::vector<uint8_t>{255, 0, 0, 0, 0, 255}));
}

// A GIF written with giflib: 3x2, four palette colors, index 3 transparent.
std::string TinyGif(bool interlace) {
  std::string out;
  int error = 0;
  GifFileType* gif = EGifOpen(
      &out,
      [](GifFileType* g, const GifByteType* data, int n) {
        static_cast<std::string*>(g->UserData)
            ->append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
        return n;
      },
      &error);
  GifColorType colors[4] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {9, 9, 9}};
  ColorMapObject* map = GifMakeMapObject(4, colors);
  EGifSetGifVersion(gif, true);  // GIF89a: graphics control extensions
  EGifPutScreenDesc(gif, 3, 2, 2, 0, map);
  GraphicsControlBlock gcb{};
  gcb.TransparentColor = 3;
  gcb.DisposalMode = DISPOSAL_UNSPECIFIED;
  GifByteType ext[4];
  const size_t len = EGifGCBToExtension(&gcb, ext);
  EGifPutExtension(gif, GRAPHICS_EXT_FUNC_CODE, static_cast<int>(len), ext);
  EGifPutImageDesc(gif, 0, 0, 3, 2, interlace, nullptr);
  GifPixelType row0[3] = {0, 1, 2};
  GifPixelType row1[3] = {3, 2, 1};
  EGifPutLine(gif, row0, 3);
  EGifPutLine(gif, row1, 3);
  EGifCloseFile(gif, &error);
  GifFreeMapObject(map);
  return out;
}

TEST(ImageTest, GifFirstFrameWithTransparency) {
  for (bool interlace : {false, true}) {
    auto img = DecodeImage(TinyGif(interlace), {});
    KILN_ASSERT_RESULT_OK(img);
    EXPECT_EQ(img->width, 3);
    EXPECT_EQ(img->height, 2);
    EXPECT_EQ(img->pixels, (std::vector<uint8_t>{255, 0, 0, 0, 255, 0, 0, 0, 255,  //
                                                 255, 255, 255, 0, 0, 255, 0, 255, 0}));
  }
  const std::string gif = TinyGif(false);
  auto cut = DecodeImage(gif.substr(0, gif.size() / 2 + 8), {});
  ASSERT_FALSE(cut.ok());
  EXPECT_EQ(cut.status().code(), StatusCode::kInvalidArgument);
}

// EXIF orientation 6 ("rotate 90 clockwise to display") on a 40x20 JPEG gives a 20x40 image.
TEST(ImageTest, ExifOrientationIsApplied) {
  const cv::Mat pic = TestPicture(40, 20);
  std::string jpeg = Encode(pic, ".jpg", {cv::IMWRITE_JPEG_QUALITY, 95});
  // APP1 "Exif\0\0" + little-endian TIFF with one IFD entry: Orientation (0x0112) SHORT = 6.
  const std::string tiff("II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0", 26);
  const std::string payload = std::string("Exif\0\0", 6) + tiff;
  const size_t len = payload.size() + 2;
  std::string app1 = "\xff\xe1";
  app1.push_back(static_cast<char>(len >> 8));
  app1.push_back(static_cast<char>(len & 0xff));
  app1 += payload;
  jpeg.insert(2, app1);
  auto img = DecodeImage(jpeg, {});
  KILN_ASSERT_RESULT_OK(img);
  EXPECT_EQ(img->width, 20);
  EXPECT_EQ(img->height, 40);
  cv::Mat rotated;
  cv::rotate(pic, rotated, cv::ROTATE_90_CLOCKWISE);
  EXPECT_LE(MeanAbsDiff(*img, rotated), 6.0);
}

TEST(ImageTest, OddSizesPreprocessToTheModelInput) {
  const Normalization norm{{0.5F, 0.5F, 0.5F}, {0.25F, 0.25F, 0.25F}};
  for (auto [w, h] :
       {std::pair{1, 1}, std::pair{1000, 20}, std::pair{4000, 3000}, std::pair{7, 300}}) {
    SCOPED_TRACE(std::to_string(w) + "x" + std::to_string(h));
    auto img = DecodeImage(Encode(TestPicture(w, h), ".png"), {});
    KILN_ASSERT_RESULT_OK(img);
    std::vector<float> out(3 * 32 * 32, -100.0F);
    KILN_ASSERT_OK(PreprocessImage(*img, 32, 32, norm, out.data()));
    for (float v : out) {
      ASSERT_GE(v, -2.0F - 1e-6F);
      ASSERT_LE(v, 2.0F + 1e-6F);
    }
  }
}

// A 32x32 PNG of a training image gives bit-for-bit the tensor the training pipeline makes.
TEST(ImageTest, PngTensorEqualsTheTrainingPipelineTensor) {
  const ImageSet& test = testing::SharedDataset().test;
  const Normalization norm = ComputeNormalization(testing::SharedDataset().train);
  for (int64_t index : {0, 1, 4321}) {
    auto img = DecodeImage(Encode(TestPicture(32, 32, index), ".png"), {});
    KILN_ASSERT_RESULT_OK(img);
    std::vector<float> got(3072);
    KILN_ASSERT_OK(PreprocessImage(*img, 32, 32, norm, got.data()));
    ImageSet one = test.Subset({index});
    LoaderOptions lo;
    lo.batch_size = 1;
    lo.shuffle = false;
    lo.augment = false;
    BatchLoader loader(&one, norm, lo);
    std::vector<float> want(3072);
    int64_t label = 0;
    loader.FillBatch(0, 0, want.data(), &label);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
        << "image " << index;
  }
}

// EncodeImage (kiln data images) writes the data set's own pixels: lossless formats decode
// back to exactly the planar CIFAR-10 bytes, JPEG to nearly them.
TEST(ImageTest, EncodeImageRoundTripsTheDataSetPixels) {
  const ImageSet& test = testing::SharedDataset().test;
  for (ImageFormat format : {ImageFormat::kPng, ImageFormat::kBmp, ImageFormat::kTiff,
                             ImageFormat::kWebp, ImageFormat::kJpeg}) {
    SCOPED_TRACE(std::string(ImageFormatName(format)));
    auto bytes = EncodeImage(test.image(7), 3, 32, 32, format);
    KILN_ASSERT_RESULT_OK(bytes);
    EXPECT_EQ(SniffImageFormat(*bytes), format);
    auto img = DecodeImage(*bytes, {});
    KILN_ASSERT_RESULT_OK(img);
    ASSERT_EQ(img->width, 32);
    ASSERT_EQ(img->height, 32);
    int max_diff = 0;
    for (int64_t c = 0; c < 3; ++c) {
      for (int64_t p = 0; p < 1024; ++p) {
        const int want = test.image(7)[c * 1024 + p];
        const int got = img->pixels[static_cast<size_t>(p * 3 + c)];
        max_diff = std::max(max_diff, std::abs(want - got));
      }
    }
    // OpenCV writes WebP lossless by default; JPEG is lossy.
    if (format == ImageFormat::kJpeg) {
      EXPECT_LT(max_diff, 96);
    } else {
      EXPECT_EQ(max_diff, 0);
    }
  }
  EXPECT_FALSE(EncodeImage(test.image(0), 3, 32, 32, ImageFormat::kGif).ok());
  EXPECT_FALSE(EncodeImage(test.image(0), 1, 32, 32, ImageFormat::kPng).ok());
}

TEST(ImageTest, BadInputIsAnErrorNotACrash) {
  const std::string png = Encode(TestPicture(), ".png");
  const std::string jpeg = Encode(TestPicture(), ".jpg");
  // A PNG header claiming 100000 x 100000 pixels and nothing else.
  std::string bomb = png.substr(0, 33);
  const char dims[8] = {0, 1, static_cast<char>(0x86), static_cast<char>(0xa0),
                        0, 1, static_cast<char>(0x86), static_cast<char>(0xa0)};
  bomb.replace(16, 8, dims, 8);
  ImageLimits small;
  small.max_encoded_bytes = 100;
  struct Case {
    const char* name;
    std::string bytes;
    ImageLimits limits;
    StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"empty", "", {}, StatusCode::kInvalidArgument, "empty file"},
      {"garbage",
       "this is not an image at all",
       {},
       StatusCode::kInvalidArgument,
       "not a supported image"},
      {"truncated png",
       png.substr(0, png.size() / 2),
       {},
       StatusCode::kInvalidArgument,
       "truncated"},
      {"truncated jpeg",
       jpeg.substr(0, jpeg.size() / 2),
       {},
       StatusCode::kInvalidArgument,
       "truncated"},
      {"header only", png.substr(0, 12), {}, StatusCode::kInvalidArgument, "PNG header"},
      {"bomb", bomb, {}, StatusCode::kResourceExhausted, "100000x100000 pixels"},
      {"too many bytes", png, small, StatusCode::kResourceExhausted, "over the limit of 100"},
      {"jpeg magic, junk",
       std::string("\xff\xd8\xff\xe0", 4) + std::string(64, 'x'),
       {},
       StatusCode::kInvalidArgument,
       "JPEG"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto r = DecodeImage(c.bytes, c.limits);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), c.code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.message), std::string::npos) << r.status().ToString();
  }
  // Random bytes behind every magic number never crash.
  std::mt19937 rng(5);
  for (const char* magic : {"\xff\xd8\xff", "\x89PNG\r\n\x1a\n", "GIF89a", "BM", "II*"}) {
    for (int i = 0; i < 20; ++i) {
      std::string junk(magic);
      for (int k = 0; k < 200; ++k) junk.push_back(static_cast<char>(rng()));
      auto r = DecodeImage(junk, {});
      EXPECT_FALSE(r.ok() && r->pixels.empty());
    }
  }
}

}  // namespace
}  // namespace kiln::data
