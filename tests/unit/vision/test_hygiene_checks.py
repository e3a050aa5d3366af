"""The engine's hygiene checks on small generated images: embedding near duplicates, metadata
leakage by cross-validated AUC, image-quality flags, inconsistent masks and boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from linesight.vision.data.hygiene import (
    annotation_issues,
    embedding_near_duplicates,
    image_stats,
    metadata_leaks,
    quality_flags,
    straddling_parts,
)
from linesight.vision.data.imageio import encode_png
from linesight.vision.data.manifest import Sample


def _sample(path: Path, img: np.ndarray, label: str = "good", **kw: object) -> Sample:
    path.write_bytes(encode_png(img))
    fields: dict[str, object] = {"mask": None, "part_id": path.stem, "batch": "", "station": "",
                                 "captured_at": None, "boxes": ()}  # fmt: skip
    fields.update(kw)
    return Sample(image=path, label=label, **fields)  # type: ignore[arg-type]


def _texture(seed: int, side: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 30, (side // 8, side // 8))
    return np.clip(np.kron(base, np.ones((8, 8))) + rng.normal(0, 3, (side, side)), 0, 255).astype(np.uint8)


def test_embedding_pairs_a_reshoot_under_other_light_but_not_different_parts(tmp_path: Path) -> None:
    originals = [_sample(tmp_path / f"p{i}.png", _texture(i)) for i in range(8)]
    brighter = np.clip(_texture(3).astype(np.int16) + 6, 0, 255).astype(np.uint8)
    reshoot = _sample(tmp_path / "reshoot.png", brighter)
    pairs = embedding_near_duplicates([*originals, reshoot], max_distance=0.01)
    assert {(p.a.name, p.b.name) for p in pairs} == {("p3.png", "reshoot.png")}


def test_a_station_that_gives_the_label_away_is_flagged(tmp_path: Path) -> None:
    samples = []
    for i in range(40):
        label = "scratch" if i % 2 else "good"
        samples.append(_sample(tmp_path / f"i{i}.png", _texture(100 + i, 32), label,
                               station="cam-b" if label == "scratch" else "cam-a",
                               batch=f"b{(i // 2) % 4}", extra=(("camera", f"c{i % 3}"),)))  # fmt: skip
    leaks = {lf.attribute: lf for lf in metadata_leaks(samples, image_stats(samples))}
    assert leaks["station"].flagged and leaks["station"].auc > 0.95
    assert not leaks["batch"].flagged and not leaks["camera"].flagged
    assert "image_size" not in leaks  # one size: carries no information, not checked


def test_quality_flags_and_annotation_issues(tmp_path: Path) -> None:
    dark = _sample(tmp_path / "dark.png", np.full((32, 32), 3, np.uint8))
    ok = _sample(tmp_path / "ok.png", _texture(1, 32), "scratch", boxes=(("scratch", 1, 1, 40, 8),))
    (tmp_path / "empty_mask.png").write_bytes(encode_png(np.zeros((32, 32), np.uint8)))
    masked = _sample(tmp_path / "m.png", _texture(2, 32), "scratch", mask=tmp_path / "empty_mask.png")
    good_box = _sample(tmp_path / "g.png", _texture(4, 32), boxes=(("scratch", 1, 1, 5, 5),))
    samples = [dark, ok, masked, good_box]
    stats = image_stats(samples)
    flags = quality_flags(samples, stats)
    assert dark.image in flags["underexposed"] and dark.image in flags["flat"]
    assert ok.image not in flags.get("underexposed", [])
    issues = {(i.image.name, i.reason) for i in annotation_issues(samples, stats)}
    assert issues == {
        ("ok.png", "box [1, 1, 40, 8] outside the image"),
        ("m.png", "defect mask is empty"),
        ("g.png", "good image has boxes"),
    }


def test_straddling_parts_names_the_splits(tmp_path: Path) -> None:
    a = _sample(tmp_path / "a.png", _texture(1, 32), part_id="P1")
    b = _sample(tmp_path / "b.png", _texture(2, 32), part_id="P1")
    c = _sample(tmp_path / "c.png", _texture(3, 32), part_id="P2")
    split = {a.image: "train", b.image: "holdout", c.image: "train"}
    assert straddling_parts([a, b, c], split) == {"P1": ["holdout", "train"]}
