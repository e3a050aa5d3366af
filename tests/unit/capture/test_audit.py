from __future__ import annotations

import cv2
import numpy as np
import pytest

from linesight.capture.app import audit as qa
from linesight.capture.app.profile import AuditThresholds
from tests.unit.capture.helpers import textured


def auditor(**kw: object) -> qa.FrameAuditor:
    return qa.FrameAuditor(AuditThresholds(**kw))  # type: ignore[arg-type]


def test_sharp_well_exposed_frame_passes() -> None:
    result = auditor().audit(textured(1), pixel_format="Mono8", sha256="a" * 64, frame_id="f1")
    assert result.passed, result.reasons
    assert result.measurements is not None and result.measurements.blur_variance > 100


def test_blur_exposure_and_contrast_have_reason_codes() -> None:
    a = auditor()
    blurred = cv2.GaussianBlur(textured(2), (0, 0), 8)
    assert qa.BLUR in a.audit(blurred, pixel_format="Mono8", sha256="b" * 64, frame_id="b").reasons
    white = np.full((100, 100), 255, np.uint8)
    assert qa.OVEREXPOSED in a.audit(white, pixel_format="Mono8", sha256="c" * 64, frame_id="c").reasons
    black = np.zeros((100, 100), np.uint8)
    reasons = a.audit(black, pixel_format="Mono8", sha256="d" * 64, frame_id="d").reasons
    assert {qa.UNDEREXPOSED, qa.LOW_CONTRAST, qa.BLUR} <= set(reasons)


def test_exact_and_near_duplicates_point_at_the_earlier_frame() -> None:
    a = auditor(near_duplicate_distance=4)
    img = textured(3)
    assert a.audit(img, pixel_format="Mono8", sha256="1" * 64, frame_id="first").passed
    dup = a.audit(img, pixel_format="Mono8", sha256="1" * 64, frame_id="second")
    assert dup.reasons == [qa.REPEATED_FRAME] and dup.duplicate_of == "first"  # the previous frame
    brighter = np.clip(img.astype(np.int16) + 3, 0, 255).astype(np.uint8)  # re-exposed copy, new bytes
    near = a.audit(brighter, pixel_format="Mono8", sha256="2" * 64, frame_id="third")
    assert near.reasons == [qa.NEAR_DUPLICATE] and near.duplicate_of == "first"
    other = a.audit(textured(4), pixel_format="Mono8", sha256="3" * 64, frame_id="fourth")
    assert other.passed
    again = a.audit(img, pixel_format="Mono8", sha256="1" * 64, frame_id="fifth")
    assert again.reasons == [qa.DUPLICATE] and again.duplicate_of == "first"  # seen, not consecutive


def test_size_and_pixel_format_follow_the_profile() -> None:
    a = qa.FrameAuditor(AuditThresholds(), expected_size=(160, 120), expected_pixel_format="Mono8")
    assert a.audit(textured(5), pixel_format="Mono8", sha256="5" * 64, frame_id="x").passed
    r = a.audit(textured(6, (100, 100)), pixel_format="RGB8", sha256="6" * 64, frame_id="y")
    assert set(r.reasons) == {qa.SIZE_MISMATCH, qa.PIXEL_FORMAT}
    # with no format in the profile, any 8-bit format is fine and 16-bit is flagged
    b = auditor()
    assert (
        qa.PIXEL_FORMAT in b.audit(textured(7), pixel_format="Mono16", sha256="7" * 64, frame_id="z").reasons
    )


def test_calibration_lets_good_frames_pass_and_catches_blur() -> None:
    good = [textured(i) for i in range(20)]
    report = qa.calibrate(good, AuditThresholds())
    th = report.thresholds
    assert report.frames == 20 and th.calibrated_from == 20
    a = qa.FrameAuditor(th)
    for i, img in enumerate(good):
        assert a.audit(img, pixel_format="Mono8", sha256=f"{i:064x}", frame_id=str(i)).passed
    assert th.blur_min > AuditThresholds().blur_min  # tighter than the loose defaults
    blurred = cv2.GaussianBlur(textured(99), (0, 0), 3)
    assert qa.BLUR in a.audit(blurred, pixel_format="Mono8", sha256="e" * 64, frame_id="e").reasons


def test_calibration_refuses_too_few_frames() -> None:
    with pytest.raises(ValueError, match="at least 10"):
        qa.calibrate([textured(1)], AuditThresholds())
