"""A dataset folder uploaded by a caller, staged under the service's datasets root.

The service never reads a path a caller names outside its datasets root, so a folder on the
caller's machine travels as a stream of files: manifest.csv first, then the images and masks its
rows name. Each file is written into a fresh staging folder (`<root>/uploads/<uuid>/`) and the
staged folder is then imported exactly like a folder under the root (same checks, same report).
A hostile relative path, a file the manifest does not name, a file sent twice and a file or total
over the configured limits are refused with the file named; the staging folder is removed when
the upload ends, whatever the outcome (the imported images live on in S3).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.csv"
FILE_COLUMNS = ("image", "mask")  # the manifest columns that name files of the folder
MAX_PATH_CHARS = 1024


class UploadTooLargeError(Exception):
    """A file or the whole upload exceeds the service's limits (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 8 * 1024 * 1024 * 1024
    max_files: int = 200_000


def files_named(manifest: bytes) -> list[str]:
    """The relative paths the manifest's rows name (image and mask columns), in row order, each
    once. Unparseable text names nothing: the import then reports the manifest's own problem."""
    try:
        text = manifest.decode("utf-8-sig")
    except UnicodeDecodeError:
        return []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
    seen: dict[str, None] = {}
    for rec in reader:
        for column in FILE_COLUMNS:
            value = (rec.get(column) or "").strip()
            if value:
                seen.setdefault(value, None)
    return list(seen)


def check_relative(path: str) -> str:
    """`path` as a plain relative POSIX path inside a folder; ValueError naming it otherwise
    (absolute, `..` or `.` parts, empty parts, backslashes, NUL or other control characters)."""
    shown = repr(path[:200])
    if not path:
        raise ValueError("an uploaded file has an empty path")
    if len(path) > MAX_PATH_CHARS:
        raise ValueError(f"path {shown}... is longer than {MAX_PATH_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ValueError(f"path {shown} contains a NUL or control character")
    if "\\" in path:
        raise ValueError(f"path {shown} contains a backslash; use / between folders")
    if path.startswith("/"):
        raise ValueError(f"path {shown} is absolute; paths are relative to the dataset folder")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"path {shown} has an empty, '.' or '..' part; it must stay inside the folder")
    return PurePosixPath(path).as_posix()


@dataclass
class StagedUpload:
    """One upload being written under `<root>/uploads/`. Feed it `chunk()` calls in order, then
    `finish()`; `discard()` (always) removes the folder."""

    root: Path
    limits: UploadLimits = field(default_factory=UploadLimits)
    folder: Path = field(init=False)
    _named: set[str] | None = field(init=False, default=None)  # None: manifest not complete yet
    _done: set[str] = field(init=False, default_factory=set)
    _current: str = field(init=False, default="")
    _current_bytes: int = field(init=False, default=0)
    _fd: int = field(init=False, default=-1)
    _total: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        uploads = self.root / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        self.folder = uploads / uuid.uuid4().hex
        self.folder.mkdir(mode=0o700)

    def chunk(self, path: str, data: bytes, last: bool) -> None:
        """Append `data` to `path` (its first chunk opens it, `last` closes it)."""
        if path != self._current:
            if self._current:
                raise ValueError(f"file {self._current!r} ended without its last chunk before {path[:200]!r}")
            self._open(path)
        self._current_bytes += len(data)
        self._total += len(data)
        if self._current_bytes > self.limits.max_file_bytes:
            raise UploadTooLargeError(
                f"file {path!r} is larger than the upload limit of {self.limits.max_file_bytes} bytes "
                "(LINESIGHT_TRAINING_UPLOAD_MAX_FILE_BYTES)"
            )
        if self._total > self.limits.max_total_bytes:
            raise UploadTooLargeError(
                f"the upload passes its limit of {self.limits.max_total_bytes} bytes at file {path!r} "
                "(LINESIGHT_TRAINING_UPLOAD_MAX_TOTAL_BYTES)"
            )
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        if last:
            self._close()

    def _open(self, path: str) -> None:
        name = check_relative(path)
        if name in self._done:
            raise ValueError(f"file {name!r} was sent twice")
        if self._named is None and name != MANIFEST:
            raise ValueError(f"file {name!r} came before {MANIFEST}; the manifest must come first")
        if self._named is not None and name not in self._named:
            raise ValueError(f"file {name!r} is not named by {MANIFEST} (its image and mask columns)")
        if len(self._done) >= self.limits.max_files:
            raise UploadTooLargeError(
                f"file {name!r} passes the upload limit of {self.limits.max_files} files"
            )
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        # Only this upload writes the folder, so nothing in it is a link; resolving anyway keeps a
        # path that would leave it (or write through a link) out, whatever else changes.
        base = self.folder.resolve()
        if not target.parent.resolve().is_relative_to(base):
            raise ValueError(f"path {name!r} leaves the dataset folder")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(target, flags, 0o600)
        self._current, self._current_bytes = name, 0

    def _close(self) -> None:
        os.close(self._fd)
        self._fd = -1
        if self._current == MANIFEST:
            named = files_named((self.folder / MANIFEST).read_bytes())
            bad = []
            for n in named:
                try:
                    check_relative(n)
                except ValueError as exc:
                    bad.append(str(exc))
            if bad:
                raise ValueError(f"{MANIFEST} names paths outside the folder: " + "; ".join(bad[:20]))
            self._named = set(named)
        self._done.add(self._current)
        self._current = ""

    def finish(self) -> Path:
        """The staged folder, once every file sent is complete."""
        if self._current:
            raise ValueError(f"file {self._current!r} ended without its last chunk")
        if self._named is None:
            raise ValueError(f"the upload has no {MANIFEST}")
        return self.folder

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        shutil.rmtree(self.folder, ignore_errors=True)
