"""A confirmed label keeps its part, severity and geometry on the way into training, and a frozen
dataset carries them: two photos of one part share a part id (never the frame id), boxes and
polygons become the manifest's boxes (polygons also a mask); a late older round never overwrites
a relabel."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.training.service import TrainingServiceOptions, make_setup
from linesight.vision.data.manifest import load_manifest, load_mask

pytestmark = pytest.mark.integration

REGISTRY_ONLY = make_setup(TrainingServiceOptions(consume=False))


def _label(
    frame: str, ref: common_pb2.ObjectRef, *, part: str, label: str, round_: int
) -> events_pb2.LabelSubmitted:
    return events_pb2.LabelSubmitted(
        meta=new_meta("labeling"),
        frame_id=frame,
        label=label,
        severity=common_pb2.SEVERITY_MAJOR if label != "good" else common_pb2.SEVERITY_UNSPECIFIED,
        regions=[common_pb2.Region(x_min=4, y_min=5, x_max=20, y_max=12)] if label != "good" else [],
        polygons=[events_pb2.LabelPolygon(x=[30, 40, 35], y=[30, 30, 44])] if label != "good" else [],
        image=ref,
        part_id=part,
        product="tile",
        station=common_pb2.StationRef(plant="p", line="l", station="s1"),
        labeler="ann",
        reviewer="bob",
        source="review",
        round=round_,
    )


async def test_geometry_part_and_rounds_reach_the_frozen_dataset(
    stack_settings: Settings, tmp_path: Path
) -> None:
    store = ObjectStore(S3Config.from_settings(stack_settings))
    await asyncio.to_thread(store.ensure_buckets)
    png = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
    ref = await store.aput_content_addressed("frames", png)
    async with service_running("training", REGISTRY_ONLY, settings=stack_settings) as svc:
        db = svc.ctx.db
        assert db is not None
        async with db.connection() as conn:
            await conn.execute("DELETE FROM confirmed_labels")
        try:
            await svc.app.record_label(_label("fa", ref, part="P-1", label="crack", round_=1))
            await svc.app.record_label(_label("fb", ref, part="P-1", label="good", round_=1))
            await svc.app.record_label(_label("fa", ref, part="P-1", label="scratch", round_=2))
            await svc.app.record_label(_label("fa", ref, part="P-1", label="crack", round_=1))  # late
            out = await svc.app.freeze_labels(tmp_path / "frozen")
        finally:
            async with db.connection() as conn:
                await conn.execute("DELETE FROM confirmed_labels")
    with (out / "manifest.csv").open() as fh:
        rows = {Path(r["image"]).stem: r for r in csv.DictReader(fh)}
    assert rows["fa"]["label"] == "scratch" and rows["fb"]["label"] == "good"
    assert rows["fa"]["part_id"] == rows["fb"]["part_id"] == "P-1"
    assert json.loads(rows["fa"]["boxes"]) == [["scratch", 4, 5, 20, 12], ["scratch", 30, 30, 41, 45]]
    assert rows["fb"]["boxes"] == ""
    samples = {s.image.stem: s for s in load_manifest(out, unknown_columns="error")}
    assert samples["fa"].boxes and samples["fa"].part_id == "P-1"
    # the polygon is rasterised with the box into a mask at the frame's size (what the
    # segmentation head trains on); a label without a polygon has none
    assert samples["fa"].mask is not None and samples["fb"].mask is None
    m = load_mask(samples["fa"].mask, (64, 64))
    assert m[5:12, 4:20].all() and m[32, 35] and not m[50, 50] and not m[0, 0]
