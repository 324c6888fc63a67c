// Kiln's own version (from CMake's project()).
#pragma once

namespace kiln {
const char* Version();
}  // namespace kiln
