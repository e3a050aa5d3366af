"""Frame bytes -> pixels, with the header checked before anything is decoded.

The header probe reads width, height, bit depth and channels from PNG/JPEG headers without
decoding, so a 20000x20000 "decompression bomb" is refused before it allocates gigabytes, and a
16-bit frame is recognised as Mono16/RGB16 (the shared decoder rescales to 8 bit, which would hide
it from the pixel-format check).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from linesight.vision.data.imageio import ImageError
from linesight.vision.data.imageio import decode_image as shared_decode
from linesight.vision.data.imageio import encode_png as shared_encode_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # gray, RGB, palette, gray+alpha, RGBA


class FrameDecodeError(ValueError):
    """A frame cannot be turned into pixels; `reason` is the audit reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Header:
    """What the file says about itself before decoding."""

    fmt: str  # png, jpeg, other
    width: int
    height: int
    bit_depth: int
    channels: int

    @property
    def pixel_format(self) -> str:
        return pixel_format_name(self.channels, self.bit_depth)


def pixel_format_name(channels: int, bit_depth: int) -> str:
    """GenICam-style pixel format name (Mono8, RGB8, RGBa8, Mono16, ...)."""
    base = {1: "Mono", 2: "MonoA", 3: "RGB", 4: "RGBa"}.get(channels, f"C{channels}x")
    return f"{base}{bit_depth}"


def probe(data: bytes) -> Header:
    """Read the image header; raise FrameDecodeError (EMPTY, TRUNCATED, DECODE_ERROR) when unusable."""
    if not data:
        raise FrameDecodeError("EMPTY", "frame is empty (0 bytes)")
    if data.startswith(PNG_SIGNATURE):
        return _probe_png(data)
    if data.startswith(b"\xff\xd8"):
        return _probe_jpeg(data)
    if data[:2] in (b"BM",) or data[:4] in (b"II*\x00", b"MM\x00*"):
        return Header("other", 0, 0, 8, 0)  # BMP/TIFF: size known only after decoding
    raise FrameDecodeError("DECODE_ERROR", "not a PNG, JPEG, BMP or TIFF image (unknown signature)")


def _probe_png(data: bytes) -> Header:
    if len(data) < 33:
        raise FrameDecodeError("TRUNCATED", "PNG ends before its IHDR header")
    if data[12:16] != b"IHDR":
        raise FrameDecodeError("DECODE_ERROR", "PNG signature without an IHDR header (corrupt)")
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    if color not in _PNG_COLOR_CHANNELS:
        raise FrameDecodeError("DECODE_ERROR", f"PNG colour type {color} is invalid")
    channels = _PNG_COLOR_CHANNELS[color]
    if color == 3:  # palette images decode to RGB
        channels, depth = 3, 8
    return Header("png", width, height, depth, channels)


def _probe_jpeg(data: bytes) -> Header:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise FrameDecodeError("DECODE_ERROR", "JPEG marker stream is corrupt")
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > n:
                break
            depth, height, width, channels = struct.unpack(">BHHB", data[i + 4 : i + 10])
            return Header("jpeg", width, height, depth, channels)
        i += 2 + length
    raise FrameDecodeError("TRUNCATED", "JPEG ends before its frame header")


def check_size(header: Header, *, max_pixels: int, min_side: int) -> None:
    """Refuse decompression bombs and slivers before decoding."""
    if header.width and header.height:
        if header.width * header.height > max_pixels:
            raise FrameDecodeError(
                "TOO_LARGE",
                f"image is {header.width}x{header.height} = {header.width * header.height} pixels, "
                f"above the {max_pixels} limit (decompression-bomb guard; raise audit.max_pixels if real)",
            )
        if min(header.width, header.height) < min_side:
            raise FrameDecodeError(
                "TOO_SMALL", f"image is {header.width}x{header.height}, below the {min_side}px minimum side"
            )


def decode(data: bytes, *, max_pixels: int, min_side: int) -> tuple[np.ndarray, Header]:
    """uint8 gray (HxW) or RGB (HxWx3) pixels plus the header the file declared."""
    header = probe(data)
    check_size(header, max_pixels=max_pixels, min_side=min_side)
    if header.fmt in ("png", "jpeg") and _reason_for(header, data) == "TRUNCATED":
        # libjpeg fills a cut-off JPEG with gray and calls it decoded; refuse it here instead
        raise FrameDecodeError(
            "TRUNCATED", f"{header.fmt.upper()} data ends before its end marker (truncated)"
        )
    try:
        image = shared_decode(data, source="frame", max_pixels=max_pixels, min_side=min_side)
    except ImageError as exc:
        raise FrameDecodeError(_reason_for(header, data), f"cannot decode frame: {exc}") from exc
    if header.fmt == "other":
        h, w = image.shape[:2]
        header = Header("other", w, h, 8, 1 if image.ndim == 2 else image.shape[2])
        check_size(header, max_pixels=max_pixels, min_side=min_side)
    return np.ascontiguousarray(image), header


def _reason_for(header: Header, data: bytes) -> str:
    tail = data[-4096:]
    if header.fmt == "png" and b"IEND" not in tail:
        return "TRUNCATED"
    if header.fmt == "jpeg" and b"\xff\xd9" not in tail:
        return "TRUNCATED"
    return "DECODE_ERROR"


def to_uint8(image: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """Rescale >8-bit data to uint8 and drop alpha; `bgr` marks OpenCV channel order."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = ((image - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8)
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[:, :, 0]
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
        elif image.shape[2] == 3 and bgr:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG of gray or RGB pixels (fast compression: the line cannot wait on zlib level 9)."""
    return shared_encode_png(image, compression=1)


def gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
