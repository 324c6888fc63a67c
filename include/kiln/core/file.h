// Atomic, durable file writes: the one way Kiln writes a file outside serving.
//
//   KILN_RETURN_IF_ERROR(kiln::WriteFileAtomic(dir / "summary.json", text));
//   KILN_RETURN_IF_ERROR(kiln::CommitAtomically(file, [&](const std::filesystem::path& tmp) {
//     return DownloadTo(tmp);  // a writer that needs a path of its own
//   }));
//
// Both write a temporary file beside the target (".<name>.tmp.<pid>.<n>", same directory, so the
// rename never crosses a file system), fsync it, rename it over the target and fsync the
// directory. A reader (or a process started after a crash or kill -9) therefore sees either the
// old file or the complete new one, never part of one; once the call returns OK the new content
// survives a power loss. On any failure the temporary file is removed, the target is left as it
// was, and the Status names the file and the system's reason, e.g. "no space left on device while
// writing runs/x/resume.ckpt" (code ResourceExhausted for a full disk or quota).
// Thread-safe: concurrent calls use distinct temporary names; the last rename wins.
#pragma once

#include <filesystem>
#include <functional>
#include <string_view>

#include "kiln/core/status.h"

namespace kiln {

// Replaces `file` with `bytes`, atomically and durably.
Status WriteFileAtomic(const std::filesystem::path& file, std::string_view bytes);

// For writers that only write to a path (libcurl, ONNX Runtime, a file copy): calls `write` with
// a fresh temporary path beside `file` (it does not exist yet); if `write` returns OK and left a
// file there, commits it over `file` as WriteFileAtomic does. `write`'s failure (or exception) is
// returned after the temporary file is removed.
Status CommitAtomically(const std::filesystem::path& file,
                        const std::function<Status(const std::filesystem::path& tmp)>& write);

// Copies `from` over `to` atomically and durably.
Status CopyFileAtomic(const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace kiln
