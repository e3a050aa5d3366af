"""Dataset versions through the training service's gRPC API, against real NATS, PostgreSQL and S3:
import (confined to the datasets root), the S3 manifest and PostgreSQL record, DatasetVersionCreated,
the hygiene report's planted findings, waivers by a QA owner (audited), the promotion check, the
protected holdout reader, and a version from confirmed labels grouped by the capture's part id."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from linesight.common import subjects
from linesight.common.audit import AuditLog
from linesight.common.bus import Bus, Delivery
from linesight.common.db import Database
from linesight.common.identity.grpc import bearer_interceptors
from linesight.common.pb import events_pb2, training_pb2, training_pb2_grpc
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.training.app.datasets import HOLDOUT, DatasetApp, HoldoutRefusedError
from linesight.training.service import TrainingServiceOptions, make_setup
from linesight.training.store import datasets as repo
from linesight.training.store import registry
from linesight.training.store.registry import ModelRow
from linesight.vision.data.imageio import encode_png
from tests.unit.training.planted import planted_dataset, reshot_dataset

pytestmark = pytest.mark.integration

PRODUCT = "tile"


@dataclass
class Api:
    db: Database
    stub: training_pb2_grpc.TrainingServiceStub
    root: Path
    store: ObjectStore
    settings: Settings
    created: list[events_pb2.DatasetVersionCreated]
    mint: Any
    token: str = ""

    def login(self, *grants: str, subject: str) -> None:
        self.token = self.mint(*grants, subject=subject)

    def app(self) -> DatasetApp:
        return DatasetApp(self.db, _NoBus(), self.store, AuditLog(self.db), plant=self.settings.plant)


class _NoBus:
    async def publish(self, subject: str, message: Any, **_: Any) -> None:
        raise AssertionError("the holdout reader publishes nothing")


@pytest.fixture
async def api(stack_settings: Settings, mint: Any, tmp_path: Path) -> AsyncIterator[Api]:
    root = tmp_path / "datasets"
    root.mkdir()
    settings = stack_settings.model_copy(update={"datasets_dir": str(root)})
    bus = await Bus.connect(settings.nats_url, "test-datasets")
    await bus.ensure_streams()
    created: list[events_pb2.DatasetVersionCreated] = []
    stop = asyncio.Event()

    async def on_created(msg: events_pb2.DatasetVersionCreated, _: Delivery) -> None:
        created.append(msg)

    task = bus.consume_in_background(
        subjects.plant_pattern(subjects.DATASET_CREATED), f"t-ds-{uuid.uuid4().hex[:8]}",
        events_pb2.DatasetVersionCreated, on_created, stop=stop,
    )  # fmt: skip
    holder: list[Api] = []
    try:
        async with (
            service_running(
                "training", make_setup(TrainingServiceOptions(consume=False)), settings=settings
            ) as svc,
            grpc.aio.insecure_channel(
                settings.grpc_target("training"), interceptors=bearer_interceptors(lambda: holder[0].token)
            ) as channel,
        ):
            assert svc.ctx.db is not None
            store = ObjectStore(S3Config.from_settings(settings))
            holder.append(Api(svc.ctx.db, training_pb2_grpc.TrainingServiceStub(channel), root, store,
                              settings, created, mint))  # fmt: skip
            yield holder[0]
    finally:
        stop.set()
        await task
        await bus.close()


async def _import(api: Api, name: str, **kw: Any) -> training_pb2.DatasetVersion:
    api.login("engineer@plant1/tile", subject="erin")
    return await api.stub.ImportDataset(
        training_pb2.ImportDatasetRequest(product=PRODUCT, directory=name, reason="first tile set", **kw)
    )


async def test_import_records_uploads_reports_and_announces(api: Api) -> None:
    planted = planted_dataset(api.root / "planted")
    v = await _import(api, "planted")
    assert v.created and v.version == f"{PRODUCT}-{v.content_hash[:12]}"
    assert v.created_by == "erin" and v.reason == "first tile set" and v.source == "import"
    counts = json.loads(v.counts_json)
    assert counts["class"] == {"good": 32, "scratch": 31} and v.images == 63
    assert v.blocking
    manifest = json.loads(api.store.get_bytes(v.manifest_bucket, v.manifest_key))
    assert manifest["content_hash"] == v.content_hash and len(manifest["rows"]) == 63
    # The version survives its folder: the images are in S3, addressed by content.
    shutil.rmtree(planted.root)
    row = next(r for r in manifest["rows"] if r["name"] == planted.exact_copy)
    assert api.store.get_bytes("datasets", row["key"])
    for _ in range(50):
        if any(e.dataset_version == v.version for e in api.created):
            break
        await asyncio.sleep(0.1)
    event = next(e for e in api.created if e.dataset_version == v.version)
    assert event.content_hash == v.content_hash and event.created_by == "erin" and event.blocking
    assert dict(event.class_counts) == counts["class"]

    api.login("labeler@plant1/tile", subject="lee")  # everyone reads
    report = await api.stub.GetDatasetReport(
        training_pb2.GetDatasetReportRequest(version=v.version, html=True)
    )
    findings = {f["kind"]: f for f in json.loads(report.report_json)["findings"]}
    assert {"exact_duplicate", "near_duplicate", "part_straddles_split", "metadata_leak"} <= set(findings)
    assert findings["part_straddles_split"]["examples"] == [f"{planted.straddling_part}: holdout, train"]
    assert report.blocking and report.html.startswith("<!doctype html>") and "base64," in report.html
    listed = await api.stub.ListDatasetVersions(training_pb2.ListDatasetVersionsRequest(product=PRODUCT))
    assert v.version in [x.version for x in listed.versions]


async def test_same_content_is_the_same_version(api: Api) -> None:
    planted_dataset(api.root / "a")
    first = await _import(api, "a")
    shutil.copytree(api.root / "a", api.root / "b")
    again = await _import(api, str(api.root / "b"))
    assert not again.created and again.version == first.version


async def test_import_is_confined_authorised_and_names_bad_rows(api: Api, tmp_path: Path) -> None:
    planted_dataset(tmp_path / "outside")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _import(api, str(tmp_path / "outside"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "dataset root" in (
        err.value.details() or ""
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _import(api, "../outside")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    bad = api.root / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "images/a.png").write_bytes(encode_png(__import__("numpy").full((32, 32), 9, "uint8")))
    (bad / "images/zero.png").write_bytes(b"")
    (bad / "manifest.csv").write_text(
        "image,label\nimages/a.png,good\nimages/zero.png,good\nimages/nope.png,good\n"
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _import(api, "bad")
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "row 3 (images/zero.png): image is 0 bytes" in details
    assert "row 4 (images/nope.png): image file missing" in details

    api.login("labeler@plant1/tile", subject="lee")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.ImportDataset(training_pb2.ImportDatasetRequest(product=PRODUCT, directory="bad"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_blocking_version_needs_qa_waivers_before_promotion(api: Api) -> None:
    planted_dataset(api.root / "w")
    v = await _import(api, "w")
    async with api.db.connection() as conn, conn.transaction():
        await registry.register_model(conn, ModelRow(
            model_version="m-ds-1", product=PRODUCT, stage="candidate",
            metrics={"defect_recall": 0.9, "false_reject_rate": 0.05},  # passes the default gate
            taxonomy_version="1", dataset_version=v.version, artifact_bucket="models",
            artifact_key=f"{PRODUCT}/m-ds-1.tar.gz", artifact_sha256="0" * 64, artifact_bytes=1,
            gate={"min_defect_recall": 0.8, "max_false_reject_rate": 0.1, "failures": []},
        ))  # fmt: skip
    api.login("qa_owner@plant1/tile", subject="quinn")
    promote = training_pb2.PromoteModelRequest(model_version="m-ds-1", reason="release")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.PromoteModel(promote)
    assert "blocking hygiene findings" in (err.value.details() or "")

    api.login("engineer@plant1/tile", subject="erin")
    waive = training_pb2.WaiveDatasetFindingRequest(version=v.version, kind="metadata_leak", reason="ok")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.WaiveDatasetFinding(waive)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    api.login("qa_owner@plant1/tile", subject="quinn")
    report = json.loads(
        (await api.stub.GetDatasetReport(training_pb2.GetDatasetReportRequest(version=v.version))).report_json
    )
    kinds = [f["kind"] for f in report["findings"] if f["severity"] == "blocking"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.WaiveDatasetFinding(training_pb2.WaiveDatasetFindingRequest(
            version=v.version, kind="class_balance", reason="fine"))  # fmt: skip
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for kind in kinds:
        last = await api.stub.WaiveDatasetFinding(training_pb2.WaiveDatasetFindingRequest(
            version=v.version, kind=kind, reason=f"{kind}: accepted for the pilot"))  # fmt: skip
    assert not last.blocking
    assert {w["kind"] for w in json.loads(last.report_json)["waivers"]} == set(kinds)
    async with api.db.connection() as conn:
        cur = await conn.execute(
            "SELECT actor, action, reason FROM audit_trail WHERE object_id = %s ORDER BY seq", (v.version,)
        )
        audited = await cur.fetchall()
    assert [(a, b) for a, b, _ in audited] == [("quinn", "dataset.waive")] * len(kinds)
    model = await api.stub.PromoteModel(promote)
    assert model.stage == "production"


async def test_holdout_is_read_only_with_a_purpose_and_every_read_is_logged(api: Api) -> None:
    planted_dataset(api.root / "h")
    v = await _import(api, "h")
    app = api.app()
    training = await app.training_rows(v.version)
    holdout_names = {r["name"] for r in (await app.manifest(v.version))["rows"] if r["split"] == HOLDOUT}
    assert holdout_names and not holdout_names & {r["name"] for r in training}
    with pytest.raises(HoldoutRefusedError):
        await app.holdout().read(v.version, purpose="", reader="quinn")
    rows = await app.holdout().read(v.version, purpose="release check", reader="quinn")
    assert {r["name"] for r in rows} == holdout_names
    async with api.db.connection() as conn:
        reads = await repo.holdout_reads(conn, PRODUCT)
    assert (v.version, "release check", "quinn", len(rows)) in reads


async def test_version_from_confirmed_labels_groups_by_capture_part(api: Api) -> None:
    import numpy as np

    async with api.db.connection() as conn, conn.transaction():
        await conn.execute("DELETE FROM confirmed_labels")
        for i in range(12):
            img = np.full((32, 32), 40 + 15 * i, np.uint8)
            img[i : i + 3, 5:20] = 250
            ref = api.store.put_content_addressed("frames", encode_png(img))
            await registry.upsert_label(conn, {
                "frame_id": f"f{i}", "label": "scratch" if i % 2 else "good", "image_bucket": ref.bucket,
                "image_key": ref.key, "station": "s1", "part_id": f"part-{i // 2}" if i != 11 else "",
                "severity": "minor" if i % 2 else "", "product": PRODUCT,
            })  # fmt: skip
    api.login("engineer@plant1/tile", subject="erin")
    create = training_pb2.CreateDatasetVersionRequest(product=PRODUCT, reason="labels of week 48")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.CreateDatasetVersion(create)
    assert "frame f11: no part id in its capture metadata" in (err.value.details() or "")
    async with api.db.connection() as conn, conn.transaction():
        await conn.execute("UPDATE confirmed_labels SET part_id = 'part-5' WHERE frame_id = 'f11'")
    v = await api.stub.CreateDatasetVersion(create)
    assert v.source == "labels" and v.images == 12
    manifest = json.loads(api.store.get_bytes(v.manifest_bucket, v.manifest_key))
    splits: dict[str, set[str]] = {}
    for r in manifest["rows"]:
        assert not r["part_id"].startswith("f")
        splits.setdefault(r["part_id"], set()).add(r["split"])
    assert len(splits) == 6 and all(len(s) == 1 for s in splits.values())
    assert json.loads(v.counts_json)["severity"] == {"minor": 6, "unspecified": 6}


async def test_reshot_parts_stay_together_and_the_learning_curve_is_on_demand(api: Api) -> None:
    """A version's own split groups re-shot tiles (new part ids, one grey level brighter) with
    their originals, so the near duplicates are named but never across splits; the per-class
    learning curve is computed when asked, from train and val only, kept and drawn."""
    _, copies = reshot_dataset(api.root / "reshot")
    v = await _import(api, "reshot")
    assert "duplicate link(s) joined parts" in v.split_policy
    rows = {r["name"]: r for r in json.loads(api.store.get_bytes(v.manifest_bucket, v.manifest_key))["rows"]}
    assert all(rows[c]["split"] == rows[o]["split"] for c, o in copies.items())
    assert all(rows[c]["part_id"].startswith("reshot-") for c in copies)  # recorded ids unchanged

    plain = await api.stub.GetDatasetReport(training_pb2.GetDatasetReportRequest(version=v.version))
    report = json.loads(plain.report_json)
    near = next(f for f in report["findings"] if f["kind"] == "near_duplicate")
    assert near["count"] >= len(copies) and near["across_splits"] == 0 and near["severity"] == "warning"
    assert "learning_curve" not in report  # only on demand

    async with api.db.connection() as conn:
        reads_before = await repo.holdout_reads(conn, PRODUCT)
    asked = await api.stub.GetDatasetReport(
        training_pb2.GetDatasetReportRequest(version=v.version, html=True, learning_curve=True)
    )
    curve = json.loads(asked.report_json)["learning_curve"]
    holdout = sum(1 for r in rows.values() if r["split"] == HOLDOUT)
    assert curve["train_images"] + curve["val_images"] == len(rows) - holdout
    assert set(curve["classes"]) == {"good", "scratch"}
    for k in curve["classes"].values():
        assert len(k["sizes"]) == 3 and k["predicted_error_at_double"] is not None
    assert "Learning curve per class" in asked.html and asked.html.count("base64,") >= 4
    async with api.db.connection() as conn:
        assert await repo.holdout_reads(conn, PRODUCT) == reads_before
    # Kept with the version: a later plain report carries it without computing again.
    again = json.loads(
        (await api.stub.GetDatasetReport(training_pb2.GetDatasetReportRequest(version=v.version))).report_json
    )
    assert again["learning_curve"] == curve


# ---- uploads: a folder the service cannot read, streamed by the caller ---------------------------


def _chunk(path: str, data: bytes, last: bool = True) -> training_pb2.DatasetUploadChunk:
    return training_pb2.DatasetUploadChunk(
        file=training_pb2.DatasetFileChunk(path=path, data=data, last=last)
    )


def _header(product: str, reason: str = "uploaded") -> training_pb2.DatasetUploadChunk:
    return training_pb2.DatasetUploadChunk(
        header=training_pb2.DatasetUploadHeader(product=product, reason=reason)
    )


def _fresh_product() -> str:
    """A product of its own: the stack's database outlives a test, and the planted set is the
    same content every time."""
    return f"up{uuid.uuid4().hex[:8]}"


async def _nothing_recorded_or_left(api: Api, product: str) -> None:
    listed = await api.stub.ListDatasetVersions(training_pb2.ListDatasetVersionsRequest(product=product))
    assert list(listed.versions) == []
    assert not any((api.root / "uploads").iterdir()), "the staging folder outlived its upload"


async def test_upload_from_outside_the_root_records_the_version(api: Api, tmp_path: Path) -> None:
    from linesight.common.clients import TrainingClient
    from linesight.training.app.uploads import MANIFEST, files_named

    product = _fresh_product()
    elsewhere = tmp_path / "laptop" / "planted"  # not under the service's datasets root
    planted_dataset(elsewhere)
    assert not elsewhere.is_relative_to(api.root)
    files = [MANIFEST, *files_named((elsewhere / MANIFEST).read_bytes())]
    sent: list[int] = []
    async with TrainingClient(
        api.settings.grpc_target("training"), token=api.mint(f"engineer@plant1/{product}", subject="uma")
    ) as client:
        # Small chunks: every image travels in several messages.
        v = await client.upload_dataset(
            product, elsewhere, files, reason="from a laptop", on_bytes=sent.append, chunk_bytes=2048
        )
    assert v.created and v.source == "import" and v.created_by == "uma" and v.reason == "from a laptop"
    assert v.images == 63 and json.loads(v.counts_json)["class"] == {"good": 32, "scratch": 31}
    assert sum(sent) == sum((elsewhere / f).stat().st_size for f in files) and len(sent) > len(files)
    assert not any((api.root / "uploads").iterdir()), "the staging folder outlived its upload"
    # The same content imported from the service's own root is the same version.
    shutil.copytree(elsewhere, api.root / "planted")
    api.login(f"engineer@plant1/{product}", subject="erin")
    again = await api.stub.ImportDataset(
        training_pb2.ImportDatasetRequest(product=product, directory="planted", reason="same set")
    )
    assert again.version == v.version and not again.created


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("../x.png", r"path '\.\./x\.png' has an empty, '\.' or '\.\.' part"),
        ("/etc/passwd", r"path '/etc/passwd' is absolute"),
        ("images/a\x00.png", r"path 'images/a\\x00\.png' contains a NUL or control character"),
        ("images/extra.png", r"file 'images/extra\.png' is not named by manifest\.csv"),
    ],
)
async def test_upload_refuses_hostile_and_unlisted_files_naming_them(
    api: Api, tmp_path: Path, path: str, named: str
) -> None:
    import re

    product = _fresh_product()
    planted = tmp_path / "planted"
    planted_dataset(planted)
    manifest = (planted / "manifest.csv").read_bytes()
    image = next(p for p in sorted((planted / "images").rglob("*.png")))
    api.login(f"engineer@plant1/{product}", subject="erin")
    stream = [_header(product), _chunk("manifest.csv", manifest), _chunk(path, image.read_bytes())]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.UploadDataset(iter(stream))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(named, err.value.details() or ""), err.value.details()
    await _nothing_recorded_or_left(api, product)


async def test_upload_is_authorised_per_product_and_names_bad_rows(api: Api, tmp_path: Path) -> None:
    product = _fresh_product()
    planted = tmp_path / "planted"
    planted_dataset(planted)
    manifest = (planted / "manifest.csv").read_bytes()
    api.login(f"labeler@plant1/{product}", "engineer@plant1/other", subject="olga")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.UploadDataset(iter([_header(product), _chunk("manifest.csv", manifest)]))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Only the manifest sent: the import names the rows whose images never came, as ImportDataset does.
    api.login(f"engineer@plant1/{product}", subject="erin")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.UploadDataset(iter([_header(product), _chunk("manifest.csv", manifest)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image file missing" in (err.value.details() or "")
    await _nothing_recorded_or_left(api, product)


async def test_cli_import_uploads_a_local_folder(api: Api, tmp_path: Path) -> None:
    """`linesight dataset import DIR` with DIR outside the service's root: uploaded, not refused."""
    import argparse

    from linesight.cli import cmd_dataset

    product = _fresh_product()
    folder = tmp_path / "here" / "planted"
    planted_dataset(folder)
    token = tmp_path / "token"
    token.write_text(api.mint(f"engineer@plant1/{product}", subject="cli-user"))
    parser = argparse.ArgumentParser()
    cmd_dataset.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "dataset",
            "--token-file",
            str(token),
            "import",
            str(folder),
            "--product",
            product,
            "--reason",
            "cli",
        ]
    )
    result = await cmd_dataset._run(args, api.settings)
    assert result["version"].startswith(f"{product}-") and result["created"] and result["images"] == 63
    assert result["counts"]["class"] == {"good": 32, "scratch": 31} and result["created_by"] == "cli-user"
    # --server-path keeps the old meaning: a folder the service reads under its own root.
    args = parser.parse_args(
        ["dataset", "--token-file", str(token), "import", str(folder), "--product", product, "--server-path"]
    )
    with pytest.raises(ValueError, match="dataset root"):
        await cmd_dataset._run(args, api.settings)
