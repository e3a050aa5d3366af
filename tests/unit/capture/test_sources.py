"""Sources for real: harvesters against the simulated GenTL producer viky.cti, OpenCV on a video file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linesight.capture.api.grpc import profile_proto
from linesight.capture.app.profile import GenICamSettings, ProfileError, StationProfile
from linesight.capture.app.sources import (
    GenICamSource,
    OpenCVSource,
    SourceError,
    default_cti,
    load_replay_items,
    plan_node_writes,
)
from linesight.capture.app.station import CaptureStation
from tests.unit.capture.helpers import FakeBus, FakeStore, textured


def genicam_profile(**kw: Any) -> StationProfile:
    nodes = kw.pop("nodes", {"AcquisitionFrameRate": 50.0})
    return StationProfile(
        plant="p1",
        line="l1",
        station="cam",
        source="genicam",
        camera_model="Viky",
        genicam=GenICamSettings(cti=default_cti(), nodes=nodes),
        **kw,
    )


def test_enumerate_viky_devices() -> None:
    devices = GenICamSource.enumerate(default_cti())
    assert [d["serial"] for d in devices] == ["0", "1", "2"]
    assert all(d["model"] == "Viky" for d in devices)


async def test_genicam_sets_nodes_acquires_and_detects_drift(tmp_path: Path) -> None:
    p = genicam_profile(
        camera_serial="1", pixel_format="Mono8", roi_width=320, roi_height=240, drift_check_every=1
    )
    source = GenICamSource(p)
    bus = FakeBus()
    station = CaptureStation(p, bus=bus, store=FakeStore(), spool_dir=tmp_path / "spool", source=source)
    await station.start()
    try:
        assert source.device_info["serial"] == "1"
        assert source.read_node("PixelFormat") == "Mono8" and source.read_node("Width") == 320
        assert source.read_node("AcquisitionFrameRate") == pytest.approx(50.0)
        report = await station.run_free_run(limit=3)
        assert report.frames == 3
        assert await station.drain(timeout_s=10)
        captured = bus.of_type("FrameCaptured")
        assert [(f.width, f.height, f.pixel_format) for f in captured] == [(320, 240, "Mono8")] * 3
        assert all(f.trigger_source == "free_run" for f in captured)
        assert not bus.of_type("DriftAlert")
        # someone changes the frame rate on the camera behind the profile's back
        source.write_node("AcquisitionFrameRate", 10.0)
        await station.run_free_run(limit=1)
        await station.drain(timeout_s=10)
        import asyncio

        await asyncio.sleep(0.2)
        (alert,) = bus.of_type("DriftAlert")
        assert alert.kind == "camera_setting" and "AcquisitionFrameRate" in alert.message
        assert alert.value == pytest.approx(10.0) and alert.baseline == pytest.approx(50.0)
        await station.run_free_run(limit=1)  # same drift: no second alert
        await asyncio.sleep(0.2)
        assert len(bus.of_type("DriftAlert")) == 1
    finally:
        await station.stop()


async def test_genicam_software_trigger_without_trigger_nodes_grabs_next_frame(tmp_path: Path) -> None:
    p = genicam_profile(trigger_mode="software")
    source = GenICamSource(p)
    async with CaptureStation(
        p, bus=FakeBus(), store=FakeStore(), spool_dir=tmp_path / "s", source=source
    ) as st:
        event, _spooled = await st.trigger(part_id="P1")
        assert event.capture.part_id == "P1" and event.width == 400 and event.pixel_format == "RGBa8"
        assert any("TriggerMode" in n for n in source.notes)


async def test_genicam_hardware_trigger_needs_trigger_nodes() -> None:
    source = GenICamSource(genicam_profile(trigger_mode="hardware"))
    with pytest.raises(SourceError, match="TriggerMode"):
        await source.open()


async def test_genicam_bad_node_value_names_the_allowed_values() -> None:
    source = GenICamSource(genicam_profile(nodes={"PixelFormat": "Bayer12"}))
    with pytest.raises(SourceError, match=r"PixelFormat.*allowed: RGBa8, Mono8"):
        await source.open()


async def test_genicam_unknown_serial_lists_devices() -> None:
    source = GenICamSource(genicam_profile(camera_serial="nope"))
    with pytest.raises(SourceError, match=r"found: 0, 1, 2"):
        await source.open()


class FakeNodeMap:
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def has_node(self, name: str) -> bool:
        return name in self.names


def test_hardware_trigger_settings_pass_through_to_genicam() -> None:
    p = genicam_profile(trigger_mode="hardware", exposure_us=1200.0, gain_db=3.0, gain_managed=True, nodes={})
    p.genicam.trigger_source, p.genicam.trigger_activation = "Line2", "FallingEdge"
    names = {"TriggerSelector", "TriggerMode", "TriggerSource", "TriggerActivation", "ExposureTime", "Gain"}
    writes, notes = plan_node_writes(p, FakeNodeMap(names))
    assert writes == [
        ("ExposureTime", 1200.0),
        ("Gain", 3.0),
        ("TriggerSelector", "FrameStart"),
        ("TriggerMode", "On"),
        ("TriggerSource", "Line2"),
        ("TriggerActivation", "FallingEdge"),
    ]
    assert notes == []
    with pytest.raises(SourceError, match="ExposureTime"):
        plan_node_writes(p, FakeNodeMap(names - {"ExposureTime"}))


async def test_opencv_reads_a_video_file(tmp_path: Path) -> None:
    path = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    assert writer.isOpened()
    for i in range(4):
        writer.write(cv2.cvtColor(textured(i), cv2.COLOR_GRAY2BGR))
    writer.release()
    bus = FakeBus()
    src = OpenCVSource(str(path))
    p = StationProfile(plant="p1", line="l1", station="usb", source="opencv", source_uri=str(path))
    async with CaptureStation(p, bus=bus, store=FakeStore(), spool_dir=tmp_path / "s", source=src) as st:
        report = await st.run_free_run()
        assert await st.drain(timeout_s=10)
    assert report.frames == 4  # the file ends the run
    assert [(f.width, f.height, f.pixel_format) for f in bus.of_type("FrameCaptured")] == [
        (160, 120, "RGB8")
    ] * 4


async def test_opencv_unopenable_source_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="cannot open"):
        await OpenCVSource("/nonexistent/video.avi").open()


def test_replay_folder_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        load_replay_items(tmp_path / "nope")
    with pytest.raises(SourceError, match=r"no manifest\.csv and no images"):
        load_replay_items(tmp_path)
    cv2.imwrite(str(tmp_path / "b.png"), textured(1))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 20), np.uint8))
    assert [i.part_id for i in load_replay_items(tmp_path)] == ["a", "b"]


def test_profile_yaml_round_trip_and_errors(tmp_path: Path) -> None:
    p = genicam_profile(camera_serial="1", exposure_us=900.0)
    path = tmp_path / "station.yaml"
    p.save(path)
    again = StationProfile.load(path)
    assert again == p and profile_proto(again).exposure_us == 900.0
    path.write_text("plant: p\nline: l\nstation: s\nexposure: 3\n")
    with pytest.raises(ProfileError, match=r"unknown key.*exposure"):
        StationProfile.load(path)
    path.write_text("plant: p\nline: l\nstation: s\nsource: webcam\n")
    with pytest.raises(ProfileError, match="source='webcam'"):
        StationProfile.load(path)
    with pytest.raises(ProfileError, match="cannot read"):
        StationProfile.load(tmp_path / "missing.yaml")
