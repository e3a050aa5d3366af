"""The staging of an uploaded dataset folder: hostile paths, unlisted files and size limits are
refused with the file named, and the staging folder goes away whatever happened."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from linesight.training.api.grpc import status_of
from linesight.training.app.uploads import StagedUpload, UploadLimits, UploadTooLargeError, files_named

MANIFEST = b"image,label,mask\nimages/a.png,scratch,masks/a.png\nimages/b.png,good,\n"


def test_files_named_are_the_image_and_mask_columns_once_each() -> None:
    assert files_named(b"\xef\xbb\xbf" + MANIFEST + b"images/a.png,good,\n") == [
        "images/a.png", "masks/a.png", "images/b.png",
    ]  # fmt: skip
    assert files_named(b"\xff\xfe not utf-8") == []


def test_staged_files_land_in_a_fresh_folder_that_is_removed(tmp_path: Path) -> None:
    staged = StagedUpload(tmp_path)
    assert staged.folder.parent == tmp_path / "uploads"
    staged.chunk("manifest.csv", MANIFEST, True)
    staged.chunk("images/a.png", b"ab", False)
    staged.chunk("images/a.png", b"cd", True)
    assert (staged.finish() / "images/a.png").read_bytes() == b"abcd"
    staged.discard()
    assert not staged.folder.exists()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../x.png", "'..' part"),
        ("images/../../x.png", "'..' part"),
        ("/abs.png", "is absolute"),
        ("images\\a.png", "backslash"),
        ("images/a\nb.png", "control character"),
        ("images/c.png", "'images/c.png' is not named by manifest.csv"),
    ],
)
def test_hostile_or_unlisted_paths_are_refused_by_name(tmp_path: Path, path: str, message: str) -> None:
    staged = StagedUpload(tmp_path)
    staged.chunk("manifest.csv", MANIFEST, True)
    with pytest.raises(ValueError) as err:
        staged.chunk(path, b"x", True)
    assert message in str(err.value)
    assert status_of(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, str(err.value))
    staged.discard()
    assert not any((tmp_path / "uploads").iterdir())


def test_order_and_completeness_are_checked(tmp_path: Path) -> None:
    staged = StagedUpload(tmp_path)
    with pytest.raises(ValueError, match=re.escape("came before manifest.csv")):
        staged.chunk("images/a.png", b"x", True)
    staged.chunk("manifest.csv", MANIFEST, True)
    staged.chunk("images/a.png", b"x", False)
    with pytest.raises(ValueError, match=re.escape("'images/a.png' ended without its last chunk")):
        staged.finish()
    staged.discard()
    staged = StagedUpload(tmp_path)
    staged.chunk("manifest.csv", MANIFEST, True)
    staged.chunk("images/a.png", b"x", True)
    with pytest.raises(ValueError, match=re.escape("'images/a.png' was sent twice")):
        staged.chunk("images/a.png", b"x", True)
    staged.discard()
    with pytest.raises(ValueError, match=re.escape("names paths outside the folder")):
        StagedUpload(tmp_path).chunk("manifest.csv", b"image,label\n../../etc/x.png,good\n", True)


def test_size_limits_are_resource_exhausted_naming_the_file(tmp_path: Path) -> None:
    staged = StagedUpload(tmp_path, UploadLimits(max_file_bytes=100, max_total_bytes=150, max_files=10))
    staged.chunk("manifest.csv", MANIFEST, True)
    with pytest.raises(
        UploadTooLargeError, match=re.escape("file 'images/a.png' is larger than the upload limit of 100")
    ):
        staged.chunk("images/a.png", b"x" * 101, True)
    staged.discard()
    staged = StagedUpload(tmp_path, UploadLimits(max_file_bytes=100, max_total_bytes=150, max_files=10))
    staged.chunk("manifest.csv", MANIFEST, True)
    with pytest.raises(
        UploadTooLargeError, match=re.escape("passes its limit of 150 bytes at file 'images/b.png'")
    ) as err:
        staged.chunk("images/a.png", b"x" * 80, True)
        staged.chunk("images/b.png", b"x" * 80, True)
    assert status_of(err.value) is not None and status_of(err.value)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[index]
    staged.discard()
