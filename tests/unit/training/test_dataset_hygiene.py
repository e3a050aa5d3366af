"""Dataset import checks and the hygiene report on a synthetic set with planted problems."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linesight.training.app.datasets import (
    HOLDOUT,
    DatasetImportError,
    assign_splits,
    inspect_manifest,
)
from linesight.training.app.hygiene_report import (
    BLOCKING,
    WARNING,
    build_report,
    find_duplicate_evidence,
    render_html,
)
from linesight.vision.data.imageio import encode_png
from linesight.vision.data.synth import generate_dataset
from tests.unit.training.planted import planted_dataset, reshot_dataset


def _report(root: Path) -> dict[str, Any]:
    inspected = inspect_manifest(root, None)
    split_of, _ = assign_splits(inspected.samples)
    split_of.update(inspected.given_split)
    report, _ = build_report(inspected.samples, split_of, name_of=lambda p: p.relative_to(root).as_posix())
    return report


def _by_kind(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    findings = report["findings"]
    assert isinstance(findings, list)
    return {f["kind"]: f for f in findings}


def test_planted_problems_are_each_named_and_block(tmp_path: Path) -> None:
    planted = planted_dataset(tmp_path / "ds")
    report = _report(planted.root)
    kinds = _by_kind(report)
    assert report["blocking"] is True
    exact = kinds["exact_duplicate"]
    assert exact["severity"] == BLOCKING and exact["across_splits"] == 1
    assert planted.exact_copy in exact["examples"][0]
    near = kinds["near_duplicate"]
    assert near["severity"] == BLOCKING
    assert any(planted.near_copy in e for e in near["examples"])
    straddle = kinds["part_straddles_split"]
    assert straddle["count"] == 1 and straddle["examples"] == [f"{planted.straddling_part}: holdout, train"]
    leak = kinds["metadata_leak"]
    assert any(e.startswith("station: AUC") for e in leak["examples"])
    assert report["leak_auc"]["station"] > 0.95
    assert report["checks"]["part_straddles_split"] == 1 and "exact_duplicate" not in report["clean"]


def test_every_check_is_reported_even_when_clean(tmp_path: Path) -> None:
    """A kind absent from the findings must read as checked and clean, not as never checked."""
    root = generate_dataset(tmp_path / "s", n_good=30, per_class=15, seed=3, size=64, classes=("scratch",),
                            n_batches=1, n_stations=1)  # fmt: skip
    report = _report(root)
    assert set(report["checks"]) >= {"exact_duplicate", "near_duplicate", "part_straddles_split",
                                     "metadata_leak", "class_balance"}  # fmt: skip
    found = {f["kind"] for f in report["findings"]}
    assert set(report["clean"]) == {k for k, n in report["checks"].items() if n == 0}
    assert not found & set(report["clean"]) and "part_straddles_split" in report["clean"]


def test_without_the_planted_leak_station_is_not_flagged(tmp_path: Path) -> None:
    planted = planted_dataset(tmp_path / "ds", leak=False)
    report = _report(planted.root)
    assert "station" not in report["leak_auc"]  # one station only: no information, not checked
    leak = _by_kind(report).get("metadata_leak")
    assert leak is None or not any(e.startswith("station") for e in leak["examples"])


def test_html_is_self_contained_with_plots(tmp_path: Path) -> None:
    planted = planted_dataset(tmp_path / "ds")
    inspected = inspect_manifest(planted.root, None)
    split_of = {s.image: "train" for s in inspected.samples} | inspected.given_split
    report, stats = build_report(inspected.samples, split_of, name_of=lambda p: p.name, embeddings=False)
    page = render_html("v1", "tile", report, inspected.samples, stats)
    assert page.count("data:image/png;base64,") == 3
    assert "part_straddles_split" in page and "<script" not in page


def test_splits_keep_parts_together_and_holdout_is_stable(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "s", n_good=40, per_class=20, seed=1, size=64, classes=("scratch",),
                            n_batches=1, n_stations=1)  # fmt: skip
    samples = inspect_manifest(root, None).samples
    split_of, policy = assign_splits(samples)
    assert "grouped by part" in policy
    where: dict[str, set[str]] = {}
    for s in samples:
        where.setdefault(s.part_id, set()).add(split_of[s.image])
    assert all(len(v) == 1 for v in where.values())
    holdout = {s.part_id for s in samples if split_of[s.image] == HOLDOUT}
    assert holdout and {s.label for s in samples if s.part_id in holdout} == {"good", "scratch"}
    again, _ = assign_splits(list(reversed(samples)))
    assert {s.part_id for s in samples if again[s.image] == HOLDOUT} == holdout


def test_time_aware_split_tests_on_later_batches(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "s", n_good=30, per_class=15, seed=2, size=64, classes=("scratch",),
                            n_batches=4, n_stations=1)  # fmt: skip
    samples = inspect_manifest(root, None).samples
    split_of, policy = assign_splits(samples)
    batches = sorted({s.batch for s in samples})
    assert policy.startswith("time-aware")
    assert {s.batch for s in samples if split_of[s.image] == HOLDOUT} <= {batches[-1]}
    assert all(split_of[s.image] == "train" for s in samples if s.batch == batches[0])
    assert {s.batch for s in samples if split_of[s.image] == "val"} <= {batches[-2], batches[-1]}


def _write(root: Path, rows: list[dict[str, str]], *, bom: bool = False, crlf: bool = False) -> None:
    header = list(rows[0])
    text = "\r\n" if crlf else "\n"
    body = text.join([",".join(header)] + [",".join(r[h] for h in header) for r in rows]) + text
    (root / "manifest.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode())


def test_bad_rows_are_each_reported_with_row_and_reason(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    img = np.full((32, 32), 128, np.uint8)
    (root / "images/a.png").write_bytes(encode_png(img))
    (root / "images/empty.png").write_bytes(b"")
    rows = [
        {"image": "images/a.png", "label": "scratch"},
        {"image": "images/missing.png", "label": "good"},
        {"image": "images/empty.png", "label": "good"},
        {"image": "images/a.png", "label": "scratch"},
        {"image": "images/a.png", "label": "scratch"},
    ]
    rows[4] = {"image": "images/b.png", "label": "bogus"}
    (root / "images/b.png").write_bytes(encode_png(img))
    _write(root, rows)
    with pytest.raises(DatasetImportError) as err:
        inspect_manifest(root, {"scratch"})
    issues = err.value.issues
    assert "row 3 (images/missing.png): image file missing" in issues
    assert "row 4 (images/empty.png): image is 0 bytes" in issues
    assert "row 5 (images/a.png): duplicate row, image already listed in row 2" in issues
    assert any(i.startswith("row 6 (images/b.png): unknown class 'bogus'") for i in issues)
    assert len(issues) == 4


def test_bom_crlf_and_mixed_sizes_are_accepted_with_notes(tmp_path: Path) -> None:
    root = tmp_path / "ok"
    (root / "images").mkdir(parents=True)
    for name, side in (("a", 32), ("b", 32), ("c", 48)):
        (root / f"images/{name}.png").write_bytes(encode_png(np.full((side, side), 100, np.uint8)))
    _write(root, [{"image": f"images/{n}.png", "label": "good"} for n in "abc"], bom=True, crlf=True)
    inspected = inspect_manifest(root, None)
    assert len(inspected.samples) == 3
    assert "manifest.csv starts with a UTF-8 BOM (ignored)" in inspected.notes
    assert "manifest.csv has CRLF line ends (read as lines)" in inspected.notes
    assert "row 4: image is 48x48, most are 32x32" in inspected.notes
    shutil.rmtree(root)
    with pytest.raises(DatasetImportError, match="no manifest\\.csv"):
        inspect_manifest(root, None)


def test_version_splits_keep_planted_near_duplicates_together(tmp_path: Path) -> None:
    """The splitter a version records groups by the duplicates the report looks for, so the
    report's near-duplicate-across-splits finding is never one our own split made."""
    root, copies = reshot_dataset(tmp_path / "s")
    inspected = inspect_manifest(root, None)
    samples = inspected.samples
    rel = {s.image: s.image.relative_to(root).as_posix() for s in samples}
    naive, _ = assign_splits(samples)
    by_name = {rel[p]: sp for p, sp in naive.items()}
    assert any(by_name[c] != by_name[o] for c, o in copies.items())  # the check below is not vacuous

    evidence = find_duplicate_evidence(samples, embeddings=False)
    split_of, policy = assign_splits(samples, evidence.links())
    assert "duplicate link(s) joined parts" in policy
    by_name = {rel[p]: sp for p, sp in split_of.items()}
    assert all(by_name[c] == by_name[o] for c, o in copies.items())
    report, _ = build_report(samples, split_of, name_of=rel.__getitem__, duplicates=evidence)
    kinds = _by_kind(report)
    near = kinds["near_duplicate"]
    assert near["count"] >= len(copies) and near["across_splits"] == 0 and near["severity"] == WARNING
    assert "part_straddles_split" not in kinds and "exact_duplicate" not in kinds


def test_defects_without_or_with_too_few_of_a_severity_are_named(tmp_path: Path) -> None:
    planted = planted_dataset(tmp_path / "ds", leak=False)
    inspected = inspect_manifest(planted.root, None)
    defects = [s for s in inspected.samples if s.label != "good"]
    severity_of = {s.image: ("critical" if i < 3 else "major") for i, s in enumerate(defects[:-2])}
    split_of = {s.image: "train" for s in inspected.samples} | inspected.given_split
    report, _ = build_report(inspected.samples, split_of, name_of=lambda p: p.name, embeddings=False,
                             severity_of=severity_of)  # fmt: skip
    items = _by_kind(report)["class_balance"]["examples"]
    assert "scratch: 2 defect image(s) without a severity (per-severity gates cannot count them)" in items
    assert any(i.startswith("severity critical: 3 defect image(s) (< 20)") for i in items)
    assert not any(i.startswith("severity major") for i in items)  # 26 of them: enough
