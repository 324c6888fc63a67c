#include "kiln/data/shift.h"

#include <gtest/gtest.h>

namespace kiln::data {
namespace {

ImageSet Tiny() {
  ImageSet s;
  s.channels = 1;
  s.height = 1;
  s.width = 4;
  s.pixels = {0, 100, 200, 250, 10, 20, 30, 40};
  s.labels = {3, 5};
  return s;
}

TEST(ShiftTest, BrightnessAddsAndClamps) {
  const ImageSet b = ShiftImages(Tiny(), Shift::kBrightness, 0.1, 1);  // + 25.5 -> rounded 26
  EXPECT_EQ(b.pixels, (std::vector<uint8_t>{26, 126, 226, 255, 36, 46, 56, 66}));
  EXPECT_EQ(b.labels, Tiny().labels);
  const ImageSet d = ShiftImages(Tiny(), Shift::kBrightness, -0.1, 1);
  EXPECT_EQ(d.pixels, (std::vector<uint8_t>{0, 75, 175, 225, 0, 0, 5, 15}));
}

TEST(ShiftTest, ContrastScalesAroundEachImagesMean) {
  // Image 2: mean 25, x0.5 -> 17.5, 22.5, 27.5, 32.5 (rounded half away from zero).
  const ImageSet c = ShiftImages(Tiny(), Shift::kContrast, 0.5, 1);
  EXPECT_EQ(std::vector<uint8_t>(c.pixels.begin() + 4, c.pixels.end()),
            (std::vector<uint8_t>{18, 23, 28, 33}));
  EXPECT_EQ(ShiftImages(Tiny(), Shift::kContrast, 1.0, 1).pixels, Tiny().pixels);
}

TEST(ShiftTest, NoiseIsSeededAndChangesPixels) {
  const ImageSet a = ShiftImages(Tiny(), Shift::kNoise, 0.1, 7);
  EXPECT_EQ(a.pixels, ShiftImages(Tiny(), Shift::kNoise, 0.1, 7).pixels);
  EXPECT_NE(a.pixels, Tiny().pixels);
  EXPECT_NE(a.pixels, ShiftImages(Tiny(), Shift::kNoise, 0.1, 8).pixels);
}

TEST(ShiftTest, OnlyClassAndSyntheticShapes) {
  const ImageSet only = OnlyClass(Tiny(), 5);
  ASSERT_EQ(only.size(), 1);
  EXPECT_EQ(only.pixels, (std::vector<uint8_t>{10, 20, 30, 40}));
  EXPECT_EQ(OnlyClass(Tiny(), 9).size(), 0);
  const ImageSet s = SyntheticShapes(5, 3, 32, 32, 1);
  EXPECT_EQ(s.size(), 5);
  EXPECT_EQ(s.pixels.size(), 5u * 3 * 32 * 32);
  EXPECT_EQ(s.pixels, SyntheticShapes(5, 3, 32, 32, 1).pixels);
  EXPECT_NE(s.pixels, SyntheticShapes(5, 3, 32, 32, 2).pixels);
  EXPECT_FALSE(ParseShift("sideways").ok());
  EXPECT_EQ(*ParseShift("noise"), Shift::kNoise);
}

}  // namespace
}  // namespace kiln::data
