"""The synthetic dataset must be a faithful stand-in for a real one: same layout, real masks, real
leakage traps (repeated parts), reproducible bytes, and defects that are where the mask says."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.cli import cmd_synth
from linesight.vision.data import synth


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.generate_sample(tmp_path_factory.mktemp("synth") / "sample", seed=7)


def test_sample_follows_the_import_layout(sample: Path) -> None:
    with (sample / "manifest.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header == list(synth.MANIFEST_COLUMNS)
    rows = _rows(sample)
    assert Counter(r["label"] for r in rows) == {"good": 10, "scratch": 3, "crack": 3, "pit": 3, "stain": 3}
    assert {r["batch"] for r in rows} == {"b0", "b1"}
    assert {r["station"] for r in rows} == {"station1", "station2"}
    for row in rows:
        image = cv2.imread(str(sample / row["image"]), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == (64, 64) and image.dtype == np.uint8
        assert row["image"].endswith(".png")
        assert row["captured_at"].endswith("Z") and row["captured_at"][:4] == "2024"
        if row["label"] == "good":
            assert row["mask"] == "" and row["boxes"] == ""
    # Rows are in capture order, as a line would replay them.
    stamps = [r["captured_at"] for r in rows]
    assert stamps == sorted(stamps)


def test_masks_and_boxes_describe_the_defect(sample: Path) -> None:
    for row in (r for r in _rows(sample) if r["label"] != "good"):
        mask = cv2.imread(str(sample / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (64, 64)
        assert (mask > 127).sum() >= 3, row
        boxes = json.loads(row["boxes"])
        assert boxes == synth.boxes_from_mask(mask, row["label"])
        assert boxes, row
        for label, x0, y0, x1, y1 in boxes:
            assert label == row["label"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert (mask[y0:y1, x0:x1] > 127).any()


def test_boxes_follow_connected_components() -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:9] = 255  # one blob
    mask[10:15, 20:22] = 200  # another, soft but above threshold
    mask[18, 0] = 255  # a 1-pixel speck: blur residue, no box
    mask[0:2, 25:28] = 100  # below the >127 threshold
    assert synth.boxes_from_mask(mask, "pit") == [["pit", 3, 2, 9, 5], ["pit", 20, 10, 22, 15]]


def test_repeated_parts_share_label_batch_and_defect_position(sample: Path) -> None:
    by_part: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in _rows(sample):
        by_part[row["part_id"]].append(row)
    repeated = {p: rs for p, rs in by_part.items() if len(rs) > 1}
    assert repeated, "the sample must exercise leakage-safe splitting"
    assert {rs[0]["label"] for rs in repeated.values()} - {"good"}, "a defective part is shot twice too"
    for rows in repeated.values():
        assert len(rows) == 2
        assert len({(r["label"], r["batch"], r["station"]) for r in rows}) == 1
        a, b = (cv2.imread(str(sample / r["image"]), cv2.IMREAD_UNCHANGED) for r in rows)
        assert not np.array_equal(a, b), "a second shot is a new photograph, not a copy"
        if rows[0]["label"] != "good":
            ca, cb = (_centroid(cv2.imread(str(sample / r["mask"]), cv2.IMREAD_UNCHANGED)) for r in rows)
            assert np.hypot(*(ca - cb)) < 0.1 * 64
    # Apart from those second shots, every row is its own part.
    assert len(by_part) == len(_rows(sample)) - len(repeated)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask > 127)
    return np.array([xs.mean(), ys.mean()])


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = synth.generate_dataset(tmp_path / "a", n_good=4, per_class=2, seed=3, size=64)
    b = synth.generate_dataset(tmp_path / "b", n_good=4, per_class=2, seed=3, size=64)
    c = synth.generate_dataset(tmp_path / "c", n_good=4, per_class=2, seed=4, size=64)
    assert _digest(a) == _digest(b)
    image_hashes = {h for k, h in _digest(a).items() if k.startswith("images/")}
    assert image_hashes.isdisjoint(h for k, h in _digest(c).items() if k.startswith("images/"))


@pytest.mark.parametrize("label", synth.DEFECT_CLASSES)
def test_defect_changes_pixels_only_where_the_mask_says(label: str) -> None:
    batch = synth.BatchStyle(0.5, 1.0, 5.0, 0.04, 1.0, 6)
    station = synth.StationStyle(0.5, 0.15, 0.1, 0.01, 0.3)
    for part_seed in range(8):
        good = synth.render_part(128, "brushed", "good", part_seed, batch)
        bad = synth.render_part(128, "brushed", label, part_seed, batch)
        np.testing.assert_array_equal(good.surface, bad.surface)
        inside = bad.mask > 0.5
        assert inside.any()
        energy = np.abs(bad.delta)
        assert energy[inside].sum() / energy.sum() > 0.6, "most of the change lies inside the mask"
        # Photographed the same way, the defect shows through light, noise and pose.
        img_good, _ = synth.capture_part(good, station, 99)
        img_bad, mask = synth.capture_part(bad, station, 99)
        diff = np.abs(img_bad.astype(np.int16) - img_good.astype(np.int16))
        assert np.percentile(diff[mask > 127], 90) >= 6
        assert diff[cv2.dilate((mask > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0].max() <= 1


def test_stains_are_faint_relative_to_the_texture() -> None:
    """Not trivial: a stain's peak contrast stays within a few texture standard deviations."""
    batch = synth.BatchStyle(0.5, 1.0, 0.0, 0.04, 1.0, 6)
    for part_seed in range(5):
        part = synth.render_part(128, "brushed", "stain", part_seed, batch)
        texture_std = float(part.surface[16:-16, 16:-16].std())
        assert 0.02 < np.abs(part.delta).max() < 4 * texture_std


@pytest.mark.parametrize("material", synth.MATERIALS)
def test_materials_render_distinct_textures(material: str) -> None:
    batch = synth.BatchStyle(0.5, 1.0, 0.0, 0.04, 1.0, 6)
    part = synth.render_part(96, material, "good", 1, batch)
    assert part.surface.dtype == np.float32 and part.surface.shape == (96, 96)
    assert 0.35 < float(part.surface.mean()) < 0.65
    if material == "brushed":  # grain runs along x: neighbours along x agree more than along y
        dx = np.abs(np.diff(part.surface, axis=1)).mean()
        dy = np.abs(np.diff(part.surface, axis=0)).mean()
        assert dx < 0.7 * dy


def test_foreign_dataset_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("image,label\nx.png,good\n")
    with pytest.raises(FileExistsError):
        synth.generate_dataset(tmp_path, n_good=2, per_class=1, size=64)
    assert (tmp_path / "manifest.csv").read_text() == "image,label\nx.png,good\n"


def test_own_dataset_is_replaced_or_reused(tmp_path: Path) -> None:
    out = synth.generate_dataset(tmp_path / "s", n_good=6, per_class=1, size=64)
    marker_mtime = (out / synth.MARKER_FILE).stat().st_mtime_ns
    assert synth.generate_dataset(out, n_good=6, per_class=1, size=64, reuse=True) == out
    assert (out / synth.MARKER_FILE).stat().st_mtime_ns == marker_mtime
    synth.generate_dataset(out, n_good=2, per_class=1, size=64, classes=("pit",))
    rows = _rows(out)
    assert Counter(r["label"] for r in rows) == {"good": 2, "pit": 1}
    on_disk = {str(p.relative_to(out)) for p in (out / "images").rglob("*.png")}
    assert on_disk == {r["image"] for r in rows}, "stale images of the previous set are gone"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 16}, "size"),
        ({"n_good": 0, "per_class": 0}, "at least one image"),
        ({"material": "wood"}, "material"),
        ({"classes": ("scratch", "dent")}, "classes"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synth.generate_dataset(tmp_path / "x", **kwargs)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="linesight")
    cmd_synth.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = _cli(["synth", "--out", str(out), "--good", "5", "--per-class", "2", "--seed", "1", "--size", "64"])
    assert rc == 0
    assert len(_rows(out)) == 5 + 2 * len(synth.DEFECT_CLASSES)
    assert "wrote 13 images" in capsys.readouterr().out


def test_cli_reports_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["synth", "--out", str(tmp_path / "x"), "--size", "8"]) == 2
    assert "size 8 is below" in capsys.readouterr().err
