"""Agreement on a shared sample (HTTP, gRPC, metrics) and the audit trail's chain: paging, verifying,
and catching a record edited behind the service's back with direct SQL (API and CLI)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from linesight.cli.main import main as cli
from linesight.common.clients.labeling import LabelingClient
from linesight.common.pb import common_pb2
from linesight.common.service import RunningService
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.app.labels import LabelInput

from .conftest import PLANT, PRODUCT, make_result, person

pytestmark = pytest.mark.integration

Labeling = RunningService[LabelingApp]
Mint = Callable[..., str]
TAMPER = "UPDATE audit_trail SET new_value = replace(new_value, '\"dent\"', '\"good\"') WHERE seq = %s"
RESTORE = "UPDATE audit_trail SET new_value = replace(new_value, '\"good\"', '\"dent\"') WHERE seq = %s"

# Eight frames, three people labeling independently: full agreement on clear cases, the
# scratch/crack boundary and one dent/good call split them.
SAMPLE = {
    "ann": ["good", "good", "scratch", "scratch", "crack", "crack", "dent", "dent"],
    "bob": ["good", "good", "scratch", "crack", "crack", "crack", "dent", "good"],
    "cat": ["good", "good", "scratch", "scratch", "crack", "scratch", "dent", "dent"],
}


def client(svc: Labeling, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=svc.ctx.app),
        base_url="http://test",
        headers={"authorization": f"Bearer {token}"},
    )


async def test_shared_sample_agreement(labeling_svc: Labeling, mint: Mint) -> None:
    # The two-pass side of the report: one of this reviewer's two reviews rejected its first pass.
    station, reviewer = f"ag{uuid.uuid4().hex[:6]}", f"rev{uuid.uuid4().hex[:6]}"
    for verdict_ok in (True, False):
        r = make_result(verdict=common_pb2.VERDICT_REVIEW, confidence=0.4, station=station)
        await labeling_svc.app.record_result(r)
        await labeling_svc.app.submit_label(person("labeler", subject="lou"), r.frame_id, LabelInput("good"))
        correction = None if verdict_ok else LabelInput("dent", "minor")
        await labeling_svc.app.review(
            person("reviewer", subject=reviewer),
            r.frame_id,
            accept=verdict_ok,
            reason="a dent",
            correction=correction,
        )
    frames = []
    for _ in range(8):
        r = make_result(verdict=common_pb2.VERDICT_REVIEW, confidence=0.4)
        await labeling_svc.app.record_result(r)
        frames.append(r.frame_id)
    qa = mint(f"qa_owner@{PLANT}/{PRODUCT}", subject="quinn")
    async with client(labeling_svc, qa) as c:
        created = await c.post("/api/samples", json={"name": "boundary cases", "frame_ids": frames})
        assert created.status_code == 200
        sample = created.json()["id"]
        too_early = await c.get(f"/api/samples/{sample}/agreement")
        assert too_early.status_code == 409  # no labels yet: nothing to measure
    for rater, labels in SAMPLE.items():
        async with client(labeling_svc, mint(f"labeler@{PLANT}/{PRODUCT}", subject=rater)) as c:
            # Labeled in reverse order: agreement must pair labels by frame, not by arrival.
            for frame, label in reversed(list(zip(frames, labels, strict=True))):
                out = await c.post(f"/api/samples/{sample}/labels", json={"frame_id": frame, "label": label})
                assert out.status_code == 204, out.text
            again = await c.post(
                f"/api/samples/{sample}/labels", json={"frame_id": frames[0], "label": "dent"}
            )
            assert again.status_code == 409  # independent first opinions: no second go
            unknown = await c.post(
                f"/api/samples/{sample}/labels", json={"frame_id": frames[0], "label": "pitt"}
            )
            assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "label"]
            stranger = await c.post(
                f"/api/samples/{sample}/labels", json={"frame_id": "other", "label": "good"}
            )
            assert stranger.status_code == 404
    async with client(labeling_svc, qa) as c:
        report = (await c.get(f"/api/samples/{sample}/agreement")).json()
    pairs = {(p["rater_a"], p["rater_b"]): p["kappa"] for p in report["pairs"]}
    for (a, b), kappa in pairs.items():
        assert kappa == pytest.approx(cohen_kappa_score(SAMPLE[a], SAMPLE[b]))
    table, _ = aggregate_raters([[SAMPLE[r][i] for r in sorted(SAMPLE)] for i in range(8)])
    assert report["fleiss_kappa"] == pytest.approx(fleiss_kappa(table, method="fleiss"))
    assert report["frames"] == 8 and report["raters"] == ["ann", "bob", "cat"]
    assert report["classes"]["good"] > report["classes"]["scratch"]  # the boundary class agrees least
    # Frames 4 and 6 each split one rater from the other two over crack/scratch: 2 pairs each.
    assert report["confusion"][0] == ["crack", "scratch", 4]
    print(
        "\nagreement on the shared sample: "
        + ", ".join(f"{a}/{b} kappa={k:.3f}" for (a, b), k in sorted(pairs.items()))
        + f"; Fleiss kappa={report['fleiss_kappa']:.3f}; per class "
        + ", ".join(f"{c}={k:.3f}" for c, k in sorted(report["classes"].items()))
    )
    async with LabelingClient(labeling_svc.ctx.settings.grpc_target("labeling"), token=qa) as grpc_client:
        over_grpc = await grpc_client.agreement(sample)
    assert over_grpc.fleiss_kappa == pytest.approx(report["fleiss_kappa"])
    assert report["disagreement_by_reviewer"][reviewer] == 0.5
    assert report["disagreement_by_station"][station] == 0.5
    assert over_grpc.disagreement_by_reviewer[reviewer] == 0.5
    assert report["disagreement_by_class"]["good"] > 0
    assert {(p.rater_a, p.rater_b): p.kappa for p in over_grpc.pairs} == pytest.approx(pairs)
    async with client(labeling_svc, qa) as c:
        metrics = (await c.get("/metrics")).text
    assert f'linesight_labeling_kappa_fleiss{{sample="{sample}"}}' in metrics


async def test_two_pass_agreement_per_labeler_reviewer_pair(labeling_svc: Labeling, mint: Mint) -> None:
    """The agreement the daily work produces: each labeler against the reviewer who checked them,
    no shared sample needed. Readable by a reviewer and a QA owner, not by a labeler."""
    labeler, reviewer, run = (f"{n}{uuid.uuid4().hex[:6]}" for n in ("lia", "rex", ""))
    first = ["dent", "dent", "scratch", "crack", "good"]
    reviewed = ["dent", "dent", "scratch", "scratch", "good"]  # one rejected: a crack is a scratch
    for station, (a, b) in enumerate(zip(first, reviewed, strict=True)):
        r = make_result(verdict=common_pb2.VERDICT_REVIEW, confidence=0.4, station=f"tp{run}{station}")
        await labeling_svc.app.record_result(r)
        await labeling_svc.app.submit_label(
            person("labeler", subject=labeler), r.frame_id, LabelInput(a, "" if a == "good" else "minor")
        )
        await labeling_svc.app.review(
            person("reviewer", subject=reviewer),
            r.frame_id,
            accept=a == b,
            reason="" if a == b else "a scratch",
            correction=None if a == b else LabelInput(b, "minor"),
        )
    async with client(labeling_svc, mint(f"labeler@{PLANT}/{PRODUCT}", subject=labeler)) as c:
        assert (await c.get("/api/agreement/workflow")).status_code == 403
    async with client(labeling_svc, mint(f"reviewer@{PLANT}/{PRODUCT}", subject=reviewer)) as c:
        report = (await c.get("/api/agreement/workflow")).json()
    (pair,) = [p for p in report["pairs"] if (p["rater_a"], p["rater_b"]) == (labeler, reviewer)]
    assert pair["frames"] == 5
    assert pair["kappa"] == pytest.approx(cohen_kappa_score(first, reviewed))
    assert report["disagreement_by_reviewer"][reviewer] == pytest.approx(1 / 5)
    assert any(c[:2] == ["crack", "scratch"] for c in report["confusion"])  # other tests add theirs


async def test_audit_chain_catches_a_record_edited_with_sql(
    labeling_svc: Labeling, mint: Mint, labeling_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = make_result(verdict=common_pb2.VERDICT_REVIEW, confidence=0.4)
    await labeling_svc.app.record_result(frame)
    async with client(labeling_svc, mint(f"labeler@{PLANT}/{PRODUCT}", subject="tess")) as c:
        labeled = await c.post(
            "/api/labels", json={"frame_id": frame.frame_id, "label": "dent", "severity": "minor"}
        )
        assert labeled.status_code == 200
    monkeypatch.setenv("LINESIGHT_PG_DSN", labeling_settings.pg_dsn)
    async with client(labeling_svc, mint(f"qa_owner@{PLANT}/*", subject="quinn")) as c:
        page = (await c.get("/api/audit", params={"actor": "tess", "action": "label.submit"})).json()
        (record,) = page["records"]
        assert record["object_id"] == frame.frame_id and record["new_value"]["label"] == "dent"
        assert record["old_value"] == {"state": "open"} and record["role"] == "labeler"
        assert (await c.get("/api/audit/verify")).json()["intact"] is True
        assert await asyncio.to_thread(cli, ["audit", "verify"]) == 0
        assert labeling_svc.ctx.db is not None
        async with labeling_svc.ctx.db.connection() as conn:
            with pytest.raises(Exception, match="append-only"):
                await conn.execute("UPDATE audit_trail SET reason = 'x' WHERE seq = %s", (record["seq"],))
        async with labeling_svc.ctx.db.connection() as conn:
            await conn.execute("ALTER TABLE audit_trail DISABLE TRIGGER audit_trail_append_only")
            await conn.execute(
                TAMPER,
                (record["seq"],),
            )
        try:
            verdict = (await c.get("/api/audit/verify")).json()
            assert verdict["intact"] is False and verdict["broken_seq"] == record["seq"]
            assert "changed" in verdict["reason"]
            assert await asyncio.to_thread(cli, ["audit", "verify"]) == 1
        finally:
            async with labeling_svc.ctx.db.connection() as conn:
                await conn.execute(
                    RESTORE,
                    (record["seq"],),
                )
                await conn.execute("ALTER TABLE audit_trail ENABLE TRIGGER audit_trail_append_only")
        assert (await c.get("/api/audit/verify")).json()["intact"] is True


async def test_users_cli_manages_accounts_and_audits_role_changes(
    labeling_svc: Labeling, mint: Mint, labeling_settings: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("LINESIGHT_PG_DSN", labeling_settings.pg_dsn)
    name = "cli-user-" + PLANT
    assert await asyncio.to_thread(cli, ["users", "add", name, "--grant", f"labeler@{PLANT}/{PRODUCT}"]) == 0
    password = capsys.readouterr().out.split("one-time password: ")[1].strip()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=labeling_svc.ctx.app), base_url="http://t"
    ) as c:
        assert (await c.post("/login", json={"username": name, "password": password})).status_code == 200
    assert (
        await asyncio.to_thread(
            cli, ["users", "set-role", name, f"reviewer@{PLANT}/*", "--reason", "promoted"]
        )
        == 0
    )
    assert await asyncio.to_thread(cli, ["users", "list"]) == 0
    assert f"{name}\tenabled\treviewer@{PLANT}/*" in capsys.readouterr().out
    assert await asyncio.to_thread(cli, ["users", "disable", name]) == 0
    assert await asyncio.to_thread(cli, ["users", "set-role", "no-such-user", "labeler"]) == 1
    async with client(labeling_svc, mint(f"admin@{PLANT}/*", subject="root")) as c:
        page = (await c.get("/api/audit", params={"object_id": name, "limit": 100})).json()["records"]
    changes = [(r["action"], r["old_value"], r["new_value"], r["reason"]) for r in page]
    assert ("user.set_role", {"grants": [f"labeler@{PLANT}/{PRODUCT}"]}, {"grants": [f"reviewer@{PLANT}/*"]},
            "promoted") in changes  # fmt: skip
    assert ("user.disable", {"disabled": False}, {"disabled": True}, "") in changes
