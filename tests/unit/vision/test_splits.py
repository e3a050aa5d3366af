"""splits: no part straddles, caps touch the training side only, holdout is deterministic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from linesight.vision.data.manifest import Sample
from linesight.vision.data.splits import (
    LeakageError,
    Split,
    SplitError,
    assert_no_leakage,
    cap_training,
    check_not_holdout,
    is_holdout,
    merge_part_groups,
    protect_holdout,
    split_by_batches,
    split_by_group,
    split_by_stations,
    split_by_time,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _s(i: int, label: str, part: str, batch: str = "b0", station: str = "s0", hours: int = 0) -> Sample:
    return Sample(
        Path(f"/d/{label}/{i}.png"), label, None, part, batch, station, T0 + timedelta(hours=hours), ()
    )


def _dataset() -> list[Sample]:
    out = []
    i = 0
    for batch in ("b0", "b1", "b2"):
        for k in range(10):
            part = f"{batch}-g{k}"
            out += [
                _s(i, "good", part, batch, hours=i),
                _s(i + 1, "good", part, batch, hours=i),
            ]  # 2 photos/part
            i += 2
        for label in ("crack", "dent"):
            for k in range(4):
                out.append(
                    _s(i, label, f"{batch}-{label}{k}", batch, station="s1" if k % 2 else "s0", hours=i)
                )
                i += 1
    return out


def _parts(samples: list[Sample]) -> set[str]:
    return {s.part_id for s in samples}


def test_split_by_batches() -> None:
    data = _dataset()
    split = split_by_batches(data, ["b2"])
    assert {s.batch for s in split.test} == {"b2"} and "b2" not in {s.batch for s in split.train}
    assert len(split.train) + len(split.test) == len(data)
    with pytest.raises(SplitError, match=r"unknown batch.*\['b0', 'b1', 'b2'\]"):
        split_by_batches(data, ["exp9"])


def test_batch_split_drops_training_photos_of_test_parts() -> None:
    data = [*_dataset(), _s(999, "good", "b2-g0", "b0")]  # part b2-g0 re-photographed in b0
    with pytest.warns(UserWarning, match="dropped"):
        split = split_by_batches(data, ["b2"])
    assert "b2-g0" not in _parts(split.train)
    assert [s.image.name for s in split.dropped] == ["999.png"]


def test_group_split_stratified_and_leak_free() -> None:
    data = _dataset()
    split = split_by_group(data, 0.25, seed=3)
    assert not _parts(split.train) & _parts(split.test)
    for label in ("good", "crack", "dent"):
        assert any(s.label == label for s in split.test)
    again = split_by_group(data, 0.25, seed=3)
    assert [s.image for s in again.test] == [s.image for s in split.test]
    other = split_by_group(data, 0.25, seed=4)
    assert [s.image for s in other.test] != [s.image for s in split.test]
    with pytest.raises(SplitError):
        split_by_group(data, 1.5)


def test_group_split_keeps_single_part_class_in_training() -> None:
    data = [*_dataset(), _s(500, "rare", "rare-1")]
    with pytest.warns(UserWarning, match="rare"):
        split = split_by_group(data, 0.3)
    assert "rare-1" in _parts(split.train)


def test_time_and_station_splits() -> None:
    data = _dataset()
    split = split_by_time(data, test_fraction=0.2)
    assert max(s.captured_at for s in split.train if s.captured_at) <= min(
        s.captured_at for s in split.test if s.captured_at
    )
    cut = split_by_time(data, cutoff=T0 + timedelta(hours=50))
    assert all(s.captured_at and s.captured_at >= T0 + timedelta(hours=50) for s in cut.test)
    st = split_by_stations(data, ["s1"])
    assert {s.station for s in st.test} == {"s1"}


def test_leakage_assertion() -> None:
    a, b = _s(1, "good", "p1"), _s(2, "good", "p1")
    with pytest.raises(LeakageError, match="p1"):
        assert_no_leakage([a], [b])
    with pytest.raises(LeakageError):
        Split([a], [b], "bad")


def test_merge_part_groups_links_duplicates() -> None:
    a, b, c = _s(1, "good", "p1"), _s(2, "good", "p2"), _s(3, "good", "p3")
    merged = merge_part_groups([a, b, c], [(a.image, b.image)])
    assert merged[0].part_id == merged[1].part_id != merged[2].part_id


def test_caps_are_seeded_and_per_class() -> None:
    train = split_by_batches(_dataset(), ["b2"]).train
    capped = cap_training(train, max_good=5, max_per_class=3, seed=1)
    counts = {lab: sum(s.label == lab for s in capped) for lab in ("good", "crack", "dent")}
    assert counts == {"good": 5, "crack": 3, "dent": 3}
    reordered = cap_training(list(reversed(train)), max_good=5, max_per_class=3, seed=1)
    assert {s.image for s in capped} == {s.image for s in reordered}  # row order does not matter
    assert {s.image for s in capped} != {
        s.image for s in cap_training(train, max_good=5, max_per_class=3, seed=2)
    }
    assert len(cap_training(train)) == len(train)


def test_holdout_is_deterministic_and_stable_under_growth() -> None:
    data = _dataset()
    work, hold = protect_holdout(data, 0.2)
    assert hold and not _parts(work) & _parts(hold)
    bigger = data + [_s(10_000 + k, "good", f"new{k}") for k in range(50)]
    _, hold2 = protect_holdout(bigger, 0.2)
    assert _parts(hold) <= _parts(hold2)  # adding data never moves old parts out
    assert is_holdout("b0-g1", 0.2) == is_holdout("b0-g1", 0.2)
    check_not_holdout(work, 0.2)
    with pytest.raises(LeakageError, match="holdout"):
        check_not_holdout(hold, 0.2)
