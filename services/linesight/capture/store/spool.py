"""Bounded, ordered on-disk frame queue: every frame passes through it on its way to S3 and NATS.

Writing each frame here first means a frame survives an S3/NATS outage and a service restart;
the deliverer removes an entry only after the object is stored and the event acknowledged. An
entry is one file `<seq>.frame` (magic, lengths, a small JSON header with the trace context and
object metadata, the FrameCaptured bytes, the image bytes), written
to a temp name and renamed, so a crash leaves either a whole entry or none. When full, the
station applies its policy (stop the line, or drop the oldest entry with a line in `dropped.jsonl`).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

MAGIC = b"LSF2"
_HEADER = struct.Struct(">4sII")


class SpoolFull(RuntimeError):  # noqa: N818 - a state the policy handles, not a bug
    """No room for another frame; the station's spool policy decides what happens."""


class SpoolCorrupt(RuntimeError):  # noqa: N818
    """An entry on disk cannot be read back (moved aside to `corrupt/`, never deleted)."""


@dataclass(frozen=True)
class SpoolEntry:
    seq: int
    header: dict[str, str]  # traceparent, S3 metadata: what the deliverer needs besides the event
    event: bytes  # serialized FrameCaptured, replayed byte for byte (same event id -> de-duplicated)
    payload: bytes  # the image bytes that go to S3
    size: int


@dataclass(frozen=True)
class DroppedFrame:
    """One line of `dropped.jsonl`: a frame the drop_oldest policy gave up, for the audit trail."""

    dropped_at: str  # ISO 8601, UTC
    seq: int
    frame_id: str
    part_id: str
    event_id: str
    reason: str


class DiskSpool:
    """FIFO of frames on local disk with byte and count limits; thread-safe."""

    def __init__(
        self, directory: str | Path, *, max_bytes: int, max_frames: int, fsync: bool = False
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self.fsync = fsync
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}  # insertion order == sequence order
        self._pending: set[int] = set()  # reserved, still being written
        self._bytes = 0
        self._next = 0
        self.in_flight: int | None = None  # seq being delivered; never dropped under drop-oldest
        self._open()

    def _open(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeError(f"cannot create spool directory {self.dir}: {exc.strerror or exc}") from exc
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # a write that never completed: the frame was not acknowledged
        found: list[tuple[int, int]] = []
        for path in self.dir.glob("*.frame"):
            try:
                found.append((int(path.stem), path.stat().st_size))
            except ValueError:
                continue
        for seq, size in sorted(found):
            self._sizes[seq] = size
            self._bytes += size
        self._next = max(self._sizes, default=-1) + 1

    @property
    def depth(self) -> int:
        return len(self._sizes)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:016d}.frame"

    def has_room(self, size: int) -> bool:
        with self._lock:
            return self._fits(size)

    def _fits(self, size: int) -> bool:
        return len(self._sizes) < self.max_frames and self._bytes + size <= self.max_bytes

    def put(self, event: bytes, payload: bytes, header: dict[str, str] | None = None) -> int:
        """Append an entry; SpoolFull when it would break a limit. OSError (disk full) propagates."""
        head = json.dumps(header or {}).encode()
        size = _HEADER.size + len(head) + len(event) + len(payload)
        if size > self.max_bytes:
            raise SpoolFull(f"a {size}-byte frame is larger than the whole spool ({self.max_bytes} bytes)")
        with self._lock:
            if not self._fits(size):
                raise SpoolFull(
                    f"spool {self.dir} full: {len(self._sizes)} frames / {self._bytes} bytes "
                    f"(limits {self.max_frames} / {self.max_bytes})"
                )
            seq = self._next
            self._next += 1
            self._sizes[seq] = size  # reserve before writing so concurrent puts respect the limit
            self._bytes += size
            self._pending.add(seq)
        try:
            path = self._path(seq)
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as fh:
                fh.write(_HEADER.pack(MAGIC, len(head), len(event)))
                fh.write(head)
                fh.write(event)
                fh.write(payload)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            tmp.replace(path)
        except OSError:
            with self._lock:
                self._sizes.pop(seq, None)
                self._bytes -= size
                self._pending.discard(seq)
            raise
        with self._lock:
            self._pending.discard(seq)
        return seq

    def oldest(self) -> SpoolEntry | None:
        """The oldest entry (marked in flight), or None when empty."""
        with self._lock:
            seq = next(iter(self._sizes), None)
            if seq is None or seq in self._pending:  # order matters: wait for the oldest write
                return None
            self.in_flight = seq
        return self._read(seq)

    def _read(self, seq: int) -> SpoolEntry:
        path = self._path(seq)
        data = path.read_bytes()
        if len(data) < _HEADER.size:
            self._quarantine(seq)
            raise SpoolCorrupt(f"spool entry {path} is truncated")
        magic, head_len, event_len = _HEADER.unpack_from(data)
        start = _HEADER.size + head_len
        if magic != MAGIC or start + event_len > len(data):
            self._quarantine(seq)
            raise SpoolCorrupt(f"spool entry {path} is not a frame entry (moved to corrupt/)")
        try:
            header = json.loads(data[_HEADER.size : start])
        except ValueError as exc:
            self._quarantine(seq)
            raise SpoolCorrupt(f"spool entry {path} has a corrupt header (moved to corrupt/)") from exc
        event = data[start : start + event_len]
        return SpoolEntry(seq, header, event, data[start + event_len :], len(data))

    def remove(self, seq: int) -> None:
        """Forget a delivered entry."""
        with self._lock:
            size = self._sizes.pop(seq, None)
            if size is not None:
                self._bytes -= size
            if self.in_flight == seq:
                self.in_flight = None
        self._path(seq).unlink(missing_ok=True)

    def release(self, seq: int) -> None:
        """Delivery of `seq` failed; it stays first in line."""
        with self._lock:
            if self.in_flight == seq:
                self.in_flight = None

    def drop_oldest(self, reason: str) -> SpoolEntry | None:
        """Remove the oldest entry not being delivered, recording it in dropped.jsonl."""
        with self._lock:
            candidates = [s for s in self._sizes if s != self.in_flight and s not in self._pending]
        for seq in candidates:
            try:
                entry = self._read(seq)
            except (SpoolCorrupt, FileNotFoundError):
                continue
            self._record_drop(entry, reason)
            self.remove(seq)
            return entry
        return None

    def _record_drop(self, entry: SpoolEntry, reason: str) -> None:
        from linesight.common.pb import events_pb2

        event = events_pb2.FrameCaptured.FromString(entry.event)
        record = DroppedFrame(
            dropped_at=datetime.now(UTC).isoformat(),
            seq=entry.seq,
            frame_id=event.frame_id,
            part_id=event.capture.part_id,
            event_id=event.meta.event_id,
            reason=reason,
        )
        with (self.dir / "dropped.jsonl").open("a") as fh:
            fh.write(json.dumps(asdict(record)) + "\n")

    def dropped_records(self) -> list[DroppedFrame]:
        path = self.dir / "dropped.jsonl"
        if not path.exists():
            return []
        return [DroppedFrame(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]

    def _quarantine(self, seq: int) -> None:
        corrupt = self.dir / "corrupt"
        corrupt.mkdir(exist_ok=True)
        path = self._path(seq)
        if path.exists():
            path.replace(corrupt / path.name)
        with self._lock:
            size = self._sizes.pop(seq, None)
            if size is not None:
                self._bytes -= size
            if self.in_flight == seq:
                self.in_flight = None
