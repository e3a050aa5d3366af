"""Subject scheme and stream layout: shapes, validation, and no two streams overlapping."""

from __future__ import annotations

import itertools

import pytest

from linesight.common import subjects as s


def test_station_and_plant_subjects_have_the_documented_shape() -> None:
    assert s.station_subject("p1", "l-2", "st_3", s.FRAME_CAPTURED) == "linesight.p1.l-2.st_3.frame.captured"
    assert s.plant_subject("p1", s.LABEL_SUBMITTED) == "linesight.p1.label.submitted"
    assert s.dlq_subject("linesight.p1.label.submitted") == "linesight.dlq.linesight.p1.label.submitted"


@pytest.mark.parametrize("bad", ["a.b", "a b", "*", ">", "", "x*", "tab\t", "ü"])
def test_tokens_that_would_change_the_subject_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid plant"):
        s.station_subject(bad, "l", "st", s.FRAME_CAPTURED)
    with pytest.raises(ValueError, match="invalid station"):
        s.station_subject("p", "l", bad, s.FRAME_CAPTURED)


def test_reserved_plant_and_wrong_scope_events_are_rejected() -> None:
    with pytest.raises(ValueError, match="reserved"):
        s.plant_subject("dlq", s.MODEL_PUBLISHED)
    with pytest.raises(ValueError, match="not a plant event"):
        s.plant_subject("p", s.FRAME_CAPTURED)
    with pytest.raises(ValueError, match="not a station event"):
        s.station_subject("p", "l", "st", s.LABEL_SUBMITTED)
    with pytest.raises(ValueError, match="noun"):
        s.plant_subject("p", "nodot")


def test_every_known_event_has_exactly_one_stream() -> None:
    for event in s.STATION_EVENTS:
        assert s.stream_for_subject(s.station_subject("p", "l", "st", event)).name
        assert s.stream_for_subject(s.station_pattern(event)).name
    for event in s.PLANT_EVENTS:
        assert s.stream_for_subject(s.plant_subject("p", event)).name
    assert s.stream_for_subject(s.station_subject("p", "l", "st", s.FRAME_CAPTURED)).name == "FRAMES"
    assert s.stream_for_subject(s.dlq_subject(s.plant_subject("p", s.MES_DISPATCHED))).name == "DLQ"
    assert (
        s.stream_for_subject(s.dlq_subject(s.station_subject("p", "l", "x", s.INSPECTION_RESULT))).name
        == "DLQ"
    )
    with pytest.raises(ValueError, match="no JetStream stream"):
        s.stream_for_subject("linesight.p.unknown.thing")


def _collide(a: str, b: str) -> bool:
    """Whether two subject patterns (with '*' only) can match one subject, as JetStream checks."""
    ta, tb = a.split("."), b.split(".")
    return len(ta) == len(tb) and all(x == y or "*" in (x, y) for x, y in zip(ta, tb, strict=True))


def test_no_two_stream_subjects_overlap() -> None:
    """JetStream refuses overlapping streams; the DLQ layout exists to avoid exactly that."""
    pairs = [(spec.name, subject) for spec in s.STREAMS for subject in spec.subjects]
    for (na, a), (nb, b) in itertools.combinations(pairs, 2):
        if na != nb:
            assert not _collide(a, b), f"{na}:{a} overlaps {nb}:{b}"
    assert all(">" not in subject for _, subject in pairs)


def test_station_and_plant_events_never_share_a_name() -> None:
    assert not set(s.STATION_EVENTS) & set(s.PLANT_EVENTS)


def test_streams_have_limits_and_a_duplicate_window() -> None:
    names = [spec.name for spec in s.STREAMS]
    assert names == [
        "FRAMES",
        "INSPECTIONS",
        "REVIEWS",
        "LABELS",
        "MODELS",
        "TAXONOMY",
        "TRAINING",
        "MES",
        "ALERTS",
        "DLQ",
    ]
    for spec in s.STREAMS:
        assert spec.max_age_s > 0 and spec.max_bytes > 0
        assert 0 < spec.duplicate_window_s <= spec.max_age_s


def test_durable_names() -> None:
    assert s.durable_name("inference", s.FRAME_CAPTURED) == "inference-frame-captured"
    with pytest.raises(ValueError):
        s.durable_name("bad name", s.FRAME_CAPTURED)


def test_dlq_of_a_dlq_subject_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot dead-letter"):
        s.dlq_subject("linesight.dlq.linesight.p.label.submitted")
