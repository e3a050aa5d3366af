"""MES refuses results it would otherwise send changed: unknown enum numbers, control characters."""

from __future__ import annotations

import pytest

from linesight.common.pb import common_pb2, events_pb2
from linesight.mes.app.dispatch import check_result


def good() -> events_pb2.InspectionResult:
    return events_pb2.InspectionResult(
        frame_id="f1",
        verdict=common_pb2.VERDICT_DEFECT,
        severity=common_pb2.SEVERITY_MAJOR,
        disposition=common_pb2.DISPOSITION_REJECT,
        capture=common_pb2.CaptureMeta(part_id="P-1"),
    )


def test_known_values_pass() -> None:
    check_result(good())


@pytest.mark.parametrize("field", ["verdict", "severity", "disposition"])
def test_unknown_enum_number_is_refused_naming_the_field(field: str) -> None:
    r = good()
    setattr(r, field, 97)
    with pytest.raises(ValueError, match=rf"InspectionResult\.{field}: unknown value 97 \(known: "):
        check_result(r)


def test_control_characters_and_overlong_ids_are_refused() -> None:
    r = good()
    r.capture.part_id = "P\n1"
    with pytest.raises(ValueError, match=r"capture\.part_id"):
        check_result(r)
    r = good()
    r.defect_class = "s" * 500
    with pytest.raises(ValueError, match="defect_class"):
        check_result(r)
