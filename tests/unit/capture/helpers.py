"""Images and in-memory stand-ins for the bus and object store used by the capture unit tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from google.protobuf.message import Message

from linesight.common.pb import common_pb2
from linesight.common.storage import content_key


def textured(seed: int, size: tuple[int, int] = (120, 160)) -> np.ndarray:
    """A sharp, well-exposed gray texture; different seeds give visibly different images."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, size=(size[0] // 8, size[1] // 8)).astype(np.uint8)
    img = cv2.resize(base, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    noise = rng.integers(-20, 20, size=size)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


class FakeBus:
    """Records publishes; `down = True` makes every publish fail like an unreachable server."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Message]] = []
        self.down = False

    async def publish(
        self,
        subject: str,
        message: Message,
        *,
        event_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if self.down:
            raise ConnectionError("bus down")
        self.messages.append((subject, message))

    def of_type(self, name: str) -> list[Any]:
        return [m for _s, m in self.messages if m.DESCRIPTOR.name == name]


class FakeStore:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.down = False

    def put_content_addressed(
        self,
        bucket: str,
        data: bytes,
        suffix: str = ".png",
        content_type: str = "image/png",
        metadata: Any = None,
    ) -> common_pb2.ObjectRef:
        if self.down:
            raise ConnectionError("s3 down")
        sha = hashlib.sha256(data).hexdigest()
        key = content_key(sha, suffix)
        self.objects.setdefault(key, (data, dict(metadata or {})))
        return common_pb2.ObjectRef(
            bucket=bucket, key=key, sha256=sha, content_type=content_type, size_bytes=len(data)
        )
