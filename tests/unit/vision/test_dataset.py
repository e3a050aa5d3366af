"""data.manifest and data.hygiene: manifest validation, duplicates (exact + near), balance and bias checks."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.vision.data.hygiene import balance_report, bias_report, find_duplicates
from linesight.vision.data.imageio import encode_png
from linesight.vision.data.manifest import ManifestError, ManifestWarning, load_manifest, load_mask

HEADER = ["image", "label", "mask", "part_id", "batch", "station", "captured_at", "boxes"]
SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "datasets"


def _texture(seed: int, size: int = 48, brightness: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (size, size), dtype=np.uint8), (7, 7), 2)
    return np.clip(img.astype(int) + brightness, 0, 255).astype(np.uint8)


def _write(root: Path, rows: list[dict[str, str]], header: list[str] = HEADER) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in header})
    return root


def _img(root: Path, rel: str, img: np.ndarray) -> str:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(encode_png(img))
    return rel


def _small_dataset(root: Path) -> Path:
    rows = []
    for i in range(4):
        rows.append(
            {
                "image": _img(root, f"images/good/g{i}.png", _texture(i)),
                "label": "good",
                "part_id": f"p{i}",
                "batch": "b1",
                "station": "s1",
                "captured_at": f"2024-05-0{i + 1}T08:00:00Z",
            }
        )
    mask = np.zeros((48, 48), np.uint8)
    mask[10:20, 10:20] = 200
    mask[30, 30] = 100  # soft edge below threshold
    rows.append(
        {
            "image": _img(root, "images/crack/c0.png", _texture(10)),
            "label": "crack",
            "mask": _img(root, "masks/crack/c0.png", mask),
            "part_id": "p9",
            "batch": "b2",
            "station": "s1",
            "boxes": '[["crack", 10, 10, 20, 20]]',
        }
    )
    return _write(root, rows)


def test_loads_valid_manifest(tmp_path: Path) -> None:
    samples = load_manifest(_small_dataset(tmp_path))
    assert [s.label for s in samples] == ["good"] * 4 + ["crack"]
    crack = samples[-1]
    assert crack.boxes == (("crack", 10, 10, 20, 20),)
    assert crack.mask is not None and crack.image.is_file()
    assert samples[0].captured_at is not None and samples[0].captured_at.tzinfo is not None
    m = load_mask(crack.mask, (48, 48))
    assert m.dtype == bool and m.sum() == 100  # the 100-valued soft pixel is excluded


def test_missing_files_listed(tmp_path: Path) -> None:
    rows = [{"image": f"images/x{i}.png", "label": "good", "part_id": str(i)} for i in range(8)]
    _write(tmp_path, rows)
    with pytest.raises(ManifestError, match=r"8 file\(s\) listed but missing: images/x0.png.*and 3 more"):
        load_manifest(tmp_path)


def test_required_and_unknown_columns(tmp_path: Path) -> None:
    _write(tmp_path / "a", [{"image": "x.png"}], header=["image"])
    with pytest.raises(ManifestError, match="missing required column"):
        load_manifest(tmp_path / "a")
    root = tmp_path / "b"
    rel = _img(root, "g.png", _texture(1))
    _write(root, [{"image": rel, "label": "good", "operator": "ann"}], header=["image", "label", "operator"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = load_manifest(root)
    messages = [str(w.message) for w in caught if w.category is ManifestWarning]
    assert any("unknown column(s) ['operator']" in m for m in messages)
    assert any("without part_id" in m for m in messages)
    assert samples[0].extra == (("operator", "ann"),)
    assert samples[0].part_id == "g.png"  # no part_id column: each photo its own part
    with pytest.raises(ManifestError, match="unknown column"):
        load_manifest(root, unknown_columns="error")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("boxes", "[[1, 2]]", "box"),
        ("boxes", "not json", "JSON"),
        ("boxes", '[["c", 5, 5, 1, 1]]', "empty"),
        ("captured_at", "yesterday", "ISO-8601"),
        ("image", "../escape.png", "relative"),
        ("label", "", "empty label"),
    ],
)
def test_bad_fields_name_the_row(tmp_path: Path, field: str, value: str, match: str) -> None:
    rel = _img(tmp_path, "g.png", _texture(1))
    row = {"image": rel, "label": "good", "part_id": "p"}
    row[field] = value
    _write(tmp_path, [row])
    with pytest.raises(ManifestError, match=match) as info:
        load_manifest(tmp_path)
    assert "row 2" in str(info.value) or field == "image"


def test_empty_and_absent_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path)
    _write(tmp_path, [])
    with pytest.raises(ManifestError, match="no rows"):
        load_manifest(tmp_path)


def test_exact_and_near_duplicates(tmp_path: Path) -> None:
    a = _texture(1)
    ok, jpg = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    (tmp_path / "a_copy.jpg").write_bytes(jpg.tobytes())
    (tmp_path / "a_copy2.jpg").write_bytes(jpg.tobytes())
    rows = [
        {"image": _img(tmp_path, "a.png", a), "label": "good", "part_id": "p1"},
        {"image": "a_copy.jpg", "label": "good", "part_id": "p2"},
        {"image": "a_copy2.jpg", "label": "crack", "part_id": "p3"},
        {"image": _img(tmp_path, "b.png", _texture(2)), "label": "good", "part_id": "p4"},
    ]
    _write(tmp_path, rows)
    report = find_duplicates(load_manifest(tmp_path))
    assert [[p.name for p in g] for g in report.exact] == [["a_copy.jpg", "a_copy2.jpg"]]
    assert len(report.exact_label_conflicts) == 1
    near = {frozenset((n.a.name, n.b.name)) for n in report.near}
    assert frozenset(("a.png", "a_copy.jpg")) in near  # re-encoded copy caught
    assert all("b.png" not in pair for pair in near)


def test_balance_and_bias(tmp_path: Path) -> None:
    rows = []
    for i in range(10):
        rows.append(
            {
                "image": _img(tmp_path, f"g{i}.png", _texture(i)),
                "label": "good",
                "part_id": f"g{i}",
                "batch": "b1",
            }
        )
        # defects photographed under brighter light: a bias the check must flag
        rows.append(
            {
                "image": _img(tmp_path, f"d{i}.png", _texture(100 + i, brightness=60)),
                "label": "dent",
                "part_id": f"d{i}",
                "batch": "b2",
            }
        )
    _write(tmp_path, rows)
    samples = load_manifest(tmp_path)
    bal = balance_report(samples)
    assert bal.class_counts == {"dent": 10, "good": 10}
    assert bal.small_classes == ["dent"]
    assert bal.by_batch == {"b1": {"good": 10}, "b2": {"dent": 10}}
    findings = {f.attribute: f for f in bias_report(samples)}
    assert findings["brightness"].flagged and findings["brightness"].auroc > 0.9
    assert not findings["width"].flagged


def test_neu_det_duplicate_is_caught() -> None:
    root = SHARED / "neu_det"
    if not root.is_dir():
        pytest.skip(f"dataset absent: {root}")
    samples = [s for s in load_manifest(root) if s.label == "patches"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = find_duplicates(samples, near=False)
    names = [[p.name for p in g] for g in report.exact]
    assert ["patches_101.jpg", "patches_105.jpg"] in names
