"""imageio: every kind of bad input becomes an ImageError naming source and cause."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.vision.data.imageio import (
    ImageError,
    decode_image,
    dhash,
    encode_png,
    hamming,
    phash,
    read_header,
    read_image,
    sha256_bytes,
    sha256_file,
)


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    )


def _png_with_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf.tobytes())


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) % 256).astype(np.uint8)


def test_png_roundtrip_is_lossless_gray_and_rgb() -> None:
    gray = _gradient()
    assert np.array_equal(decode_image(encode_png(gray)), gray)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=2)
    out = decode_image(encode_png(rgb))
    assert out.shape == rgb.shape and np.array_equal(out, rgb)  # RGB order preserved, not BGR


def test_jpeg_gray_decodes_to_2d() -> None:
    out = decode_image(_jpeg(_gradient()))
    assert out.dtype == np.uint8 and out.shape == (48, 64)


def test_16bit_is_rescaled_to_8bit_full_range() -> None:
    img16 = np.full((32, 32), 65535, np.uint16)
    img16[0, 0] = 0
    img16[0, 1] = 257 * 100
    out = decode_image(encode_png(img16))
    assert out.dtype == np.uint8
    assert out[1, 1] == 255 and out[0, 0] == 0 and out[0, 1] == 100


def test_rgba_drops_alpha() -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 7
    out = decode_image(encode_png(rgba))
    assert out.shape == (20, 20, 3)
    assert out[0, 0].tolist() == [200, 0, 0]


def test_palette_png_expands() -> None:
    # 1-bit palette PNG written by hand: 16x16, palette red/blue.
    raw = b"".join(b"\x00" + bytes([0b10101010, 0b10101010]) for _ in range(16))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 1, 3, 0, 0, 0))
        + _chunk(b"PLTE", bytes([255, 0, 0, 0, 0, 255]))
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )
    out = decode_image(png)
    assert out.shape == (16, 16, 3)
    assert out[0, 0].tolist() == [0, 0, 255] and out[0, 1].tolist() == [255, 0, 0]


def test_decompression_bomb_refused_from_header() -> None:
    bomb = _png_with_header(20000, 20000)
    assert len(bomb) < 200
    with pytest.raises(ImageError, match=r"too large.*before decoding"):
        decode_image(bomb, source="bomb.png")
    hdr = read_header(bomb)
    assert (hdr.width, hdr.height) == (20000, 20000)


def test_huge_jpeg_refused_from_sof_header() -> None:
    data = bytearray(_jpeg(_gradient(32, 32)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    with pytest.raises(ImageError, match="too large"):
        decode_image(bytes(data))


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"", "empty"),
        (b"not an image at all", "unsupported or corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "PNG"),
    ],
)
def test_garbage_raises(data: bytes, cause: str) -> None:
    with pytest.raises(ImageError, match=cause) as info:
        decode_image(data, source="cam-3/frame-17")
    assert "cam-3/frame-17" in str(info.value)


def test_truncated_png_and_jpeg_detected() -> None:
    png = encode_png(_gradient())
    with pytest.raises(ImageError, match="truncated PNG"):
        decode_image(png[: len(png) // 2])
    jpg = _jpeg(_gradient())
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(jpg[: len(jpg) - 40])


def test_corrupt_png_crc_detected() -> None:
    png = bytearray(encode_png(_gradient()))
    idat = png.find(b"IDAT")
    png[idat + 10] ^= 0xFF
    with pytest.raises(ImageError, match="CRC"):
        decode_image(bytes(png))


def test_tiny_image_refused() -> None:
    with pytest.raises(ImageError, match="too small"):
        decode_image(encode_png(np.zeros((8, 100), np.uint8)))
    assert decode_image(encode_png(np.zeros((8, 100), np.uint8)), min_side=4).shape == (8, 100)


def test_read_image_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found") as info:
        read_image(tmp_path / "nope.png")
    assert "nope.png" in str(info.value)
    with pytest.raises(ImageError, match="directory"):
        read_image(tmp_path)
    p = tmp_path / "ok.png"
    p.write_bytes(encode_png(_gradient()))
    assert read_image(p).shape == (48, 64)
    assert sha256_file(p) == sha256_bytes(p.read_bytes())


def test_encode_png_rejects_bad_arrays() -> None:
    with pytest.raises(ImageError):
        encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ImageError):
        encode_png(np.zeros((4, 4, 5), np.uint8))


def test_perceptual_hashes_survive_reencoding_but_separate_different_images() -> None:
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.integers(0, 255, (96, 96), dtype=np.uint8), (9, 9), 3)
    b = cv2.GaussianBlur(rng.integers(0, 255, (96, 96), dtype=np.uint8), (9, 9), 3)
    a_jpeg = decode_image(_jpeg(a))
    assert hamming(dhash(a), dhash(a_jpeg)) <= 4
    assert hamming(phash(a), phash(a_jpeg)) <= 4
    assert hamming(dhash(a), dhash(b)) > 10
    assert hamming(phash(a), phash(b)) > 10
