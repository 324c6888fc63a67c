# Writes a C++ file defining kiln::serve::kWebPage with the bytes of IN (cmake -P, at build time).
file(READ "${IN}" HEX HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," BYTES "${HEX}")
file(WRITE "${OUT}" "// Generated from ${IN}; do not edit.\n#include <string_view>\nnamespace kiln::serve {\nnamespace {\nconst unsigned char kBytes[] = {${BYTES} 0};\n}\nstd::string_view WebPage() { return {reinterpret_cast<const char*>(kBytes), sizeof(kBytes) - 1}; }\n}  // namespace kiln::serve\n")
