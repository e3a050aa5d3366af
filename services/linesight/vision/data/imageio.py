"""Safe image decoding, lossless encoding and image hashing.

Every image that enters LineSight (camera frames, uploaded datasets, manifests) goes through
`decode_image`, so bad input fails here with an `ImageError` that names the source and the cause,
never deep inside OpenCV or torch. Dimensions are read from the file header *before* decoding so a
decompression bomb (e.g. a 20000x20000 PNG of a few KB) is refused without allocating it.

Output convention: ``uint8`` ``HxW`` (grayscale) or ``HxWx3`` (RGB, not OpenCV's BGR).
16-bit images are rescaled linearly over the full 16-bit range (value / 257) so brightness stays
comparable between frames of the same camera (a per-image stretch would hide lighting drift).
Alpha is dropped; palette images are expanded. EXIF orientation is ignored on purpose: inspection
wants the sensor's pixel order, not a phone's display rotation.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "ImageError",
    "ImageHeader",
    "decode_image",
    "dhash",
    "encode_png",
    "hamming",
    "phash",
    "read_header",
    "read_image",
    "sha256_bytes",
    "sha256_file",
    "to_gray",
    "to_rgb",
]

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 16
MAX_FILE_BYTES = 512 * 1024 * 1024

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn have no length field


class ImageError(ValueError):
    """An image could not be accepted; the message names the source and the cause."""

    def __init__(self, source: str, cause: str) -> None:
        super().__init__(f"{source}: {cause}")
        self.source = source
        self.cause = cause


@dataclass(frozen=True)
class ImageHeader:
    """What the file header says, read without decoding pixels."""

    format: str  # "png" | "jpeg" | "bmp"
    width: int
    height: int
    channels: int
    bit_depth: int


def _sniff(data: bytes) -> str | None:
    if data.startswith(_PNG_SIG):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    return None


def _png_header(data: bytes, source: str) -> ImageHeader:
    """Walk all PNG chunks: checks CRCs and the IEND terminator (catches truncation)."""
    pos = len(_PNG_SIG)
    header: ImageHeader | None = None
    seen_idat = False
    while True:
        if pos + 8 > len(data):
            raise ImageError(source, "truncated PNG (no IEND chunk)")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ImageError(source, f"truncated PNG (chunk {ctype!r} runs past the end of the data)")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : end])
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            raise ImageError(source, f"corrupt PNG (bad CRC in chunk {ctype!r})")
        if header is None:
            if ctype != b"IHDR" or length != 13:
                raise ImageError(source, "corrupt PNG (first chunk is not IHDR)")
            width, height, depth, color_type = struct.unpack(">IIBB", body[:10])
            channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color_type)
            if channels is None:
                raise ImageError(source, f"corrupt PNG (unknown colour type {color_type})")
            header = ImageHeader("png", width, height, channels, depth)
        elif ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"IEND":
            break
        pos = end
    if not seen_idat:
        raise ImageError(source, "corrupt PNG (no image data)")
    return header


def _jpeg_header(data: bytes, source: str) -> ImageHeader:
    """Find the SOF marker before the scan; require the EOI marker at the end."""
    if not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise ImageError(source, "truncated JPEG (no end-of-image marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError(source, f"corrupt JPEG (expected a marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2 or pos + 2 + length > len(data):
            raise ImageError(source, "truncated JPEG (segment runs past the end of the data)")
        if marker in _JPEG_SOF:
            if length < 8:
                raise ImageError(source, "corrupt JPEG (short frame header)")
            depth, height, width, channels = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            return ImageHeader("jpeg", width, height, channels, depth)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ImageError(source, "corrupt JPEG (no frame header)")


def _bmp_header(data: bytes, source: str) -> ImageHeader:
    width, height = struct.unpack("<ii", data[18:26])
    depth = struct.unpack("<H", data[28:30])[0] if len(data) >= 30 else 0
    return ImageHeader("bmp", abs(width), abs(height), 1 if depth <= 8 else 3, depth)


def read_header(data: bytes, *, source: str = "<bytes>") -> ImageHeader:
    """Parse format and dimensions from the header only (no pixel allocation)."""
    if not data:
        raise ImageError(source, "empty image data")
    fmt = _sniff(data)
    if fmt == "png":
        return _png_header(data, source)
    if fmt == "jpeg":
        return _jpeg_header(data, source)
    if fmt == "bmp":
        return _bmp_header(data, source)
    raise ImageError(
        source, f"unsupported or corrupt image format (first bytes {data[:8]!r}; expected PNG, JPEG or BMP)"
    )


def decode_image(
    data: bytes,
    *,
    source: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> np.ndarray:
    """Decode PNG/JPEG/BMP bytes to uint8 gray (HxW) or RGB (HxWx3); bad input -> ImageError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError(source, f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    header = read_header(data, source=source)
    w, h = header.width, header.height
    if w <= 0 or h <= 0:
        raise ImageError(source, f"invalid dimensions {w}x{h} in the header")
    if w * h > max_pixels:
        raise ImageError(
            source,
            f"image too large: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
            "(refused before decoding)",
        )
    if min(w, h) < min_side:
        raise ImageError(source, f"image too small: {w}x{h}, the shorter side must be at least {min_side} px")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # pragma: no cover - OpenCV normally returns None instead
        raise ImageError(source, f"corrupt {header.format.upper()} ({exc})") from exc
    if img is None:
        raise ImageError(source, f"corrupt {header.format.upper()} (decoder rejected the data)")
    if img.shape[0] != h or img.shape[1] != w:
        raise ImageError(
            source,
            f"corrupt {header.format.upper()} (header says {w}x{h}, decoded {img.shape[1]}x{img.shape[0]})",
        )
    return _normalise(img, source)


def _normalise(img: np.ndarray, source: str) -> np.ndarray:
    """uint8; 2-D gray or 3-channel RGB."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(source, f"unsupported pixel type {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.ascontiguousarray(img)
    if img.ndim != 3:
        raise ImageError(source, f"unsupported image shape {img.shape}")
    if img.shape[2] == 2:  # gray + alpha
        return np.ascontiguousarray(img[:, :, 0])
    if img.shape[2] == 4:
        img = img[:, :, :3]
    if img.shape[2] != 3:
        raise ImageError(source, f"unsupported channel count {img.shape[2]}")
    return np.ascontiguousarray(img[:, :, ::-1])


def read_image(path: str | Path, **kw: int) -> np.ndarray:
    """Read and decode a file; I/O problems become ImageError naming the path."""
    p = Path(path)
    source = str(p)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(source, f"file too large ({size} bytes > {MAX_FILE_BYTES})")
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(source, "file not found") from exc
    except IsADirectoryError as exc:
        raise ImageError(source, "is a directory, not an image file") from exc
    except OSError as exc:
        raise ImageError(source, f"cannot read file ({exc.strerror or exc})") from exc
    return decode_image(data, source=source, **kw)


def encode_png(image: np.ndarray, *, compression: int = 3) -> bytes:
    """Lossless PNG of a gray (HxW) or RGB (HxWx3) uint8/uint16 image (tiny defects survive)."""
    if not isinstance(image, np.ndarray):
        raise ImageError("<array>", f"expected a numpy array, got {type(image).__name__}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError("<array>", f"PNG needs uint8 or uint16 pixels, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[:, :, [2, 1, 0, 3][: image.shape[2]]]  # RGB(A) -> BGR(A)
    elif image.ndim != 2:
        raise ImageError("<array>", f"expected HxW or HxWx3 image, got shape {image.shape}")
    if image.size == 0:
        raise ImageError("<array>", "empty image")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:  # pragma: no cover
        raise ImageError("<array>", "PNG encoding failed")
    return bytes(buf.tobytes())


# --- colour helpers -------------------------------------------------------------------------


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 HxW luminance of a gray or RGB image."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    raise ImageError("<array>", f"expected HxW or HxWx3 image, got shape {image.shape}")


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB (gray replicated) for networks that want three channels."""
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ImageError("<array>", f"expected HxW or HxWx3 image, got shape {image.shape}")


# --- hashing (shared by the capture audit and the dataset duplicate check) -------------------


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256: exact-duplicate key and content address."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _bits_to_int(bits: np.ndarray) -> int:
    value = 0
    for b in bits.ravel():
        value = (value << 1) | int(bool(b))
    return value


def dhash(image: np.ndarray, *, hash_size: int = 8) -> int:
    """Difference hash (hash_size**2 bits): robust to re-encoding and mild brightness change."""
    small = cv2.resize(to_gray(image), (hash_size + 1, hash_size), interpolation=cv2.INTER_AREA)
    return _bits_to_int(small[:, 1:] > small[:, :-1])


def phash(image: np.ndarray, *, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """DCT perceptual hash (hash_size**2 bits): robust to scaling and compression."""
    side = hash_size * highfreq_factor
    small = cv2.resize(to_gray(image), (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:hash_size, :hash_size]
    med = np.median(low.ravel()[1:])  # skip DC so overall brightness does not dominate
    return _bits_to_int(low > med)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()
