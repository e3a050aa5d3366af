"""`linesight train` against real NATS, PostgreSQL and S3: what the Helm chart's training Job runs."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from linesight.cli import cmd_train
from linesight.cli.main import main
from linesight.common.embedded import free_port
from linesight.common.embedded.config import settings_env
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.training.app.trainer import dataset_version_of
from linesight.training.service import TrainingServiceOptions, make_setup
from linesight.training.store import registry
from linesight.vision.data.manifest import load_manifest

pytestmark = pytest.mark.integration

REGISTRY_ONLY = make_setup(TrainingServiceOptions(consume=False))  # the service, to read what the CLI did


@pytest.fixture
def stack_env(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """LINESIGHT_* naming the session servers (as the chart's ConfigMap/Secret do); returns a state dir
    whose release gate no tiny model can pass, so each run ends as a candidate."""
    for name, value in settings_env(stack_settings).items():
        monkeypatch.setenv(name, value)
    state = tmp_path / "state"
    state.mkdir()
    (state / "release_gate.yaml").write_text("min_defect_recall: 2.0\n")
    monkeypatch.setenv("LINESIGHT_STATE_DIR", str(state))
    # The command routes every logger to stderr; in-process under pytest that would outlive the test.
    monkeypatch.setattr(cmd_train, "configure_logging", lambda *a, **k: None)
    return state


async def test_train_registers_a_capped_candidate_and_says_how_to_release_it(
    stack_env: Path,
    stack_settings: Settings,
    tiny_train_set: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    product = f"cli{uuid.uuid4().hex[:6]}"
    out_json = tmp_path / "outcome.json"
    args = ["train", "--dataset", str(tiny_train_set), "--product", product, "--input-size", "64"]
    args += ["--max-good", "12", "--max-per-class", "5", "--seed", "3", "--json", str(out_json)]
    # The command runs its own event loop (asyncio.run): run it off the test's loop.
    code = await asyncio.to_thread(main, args)
    out, err = capsys.readouterr()
    assert code == 0, err
    outcome = json.loads(out_json.read_text())
    version = outcome["model_version"]
    assert outcome["product"] == product and outcome["stage"] == "candidate"
    assert any("< 2.0" in f for f in outcome["gate_failures"])
    assert outcome["dataset_version"] != dataset_version_of(tiny_train_set)  # a capped sample of it
    assert f"model {version} for {product}: candidate" in out
    assert f"linesight model promote {version}" in out  # only a QA owner releases it

    store = ObjectStore(S3Config.from_settings(stack_settings))
    assert store.exists("models", f"{product}/{version}.tar.gz")
    async with service_running("training", REGISTRY_ONLY, settings=stack_settings) as svc:
        models = await svc.app.list_models(product)
        assert [(m.model_version, m.stage) for m in models] == [(version, "candidate")]
        job = await svc.app.get_job(outcome["job_id"])
        assert (job.state, job.model_version, job.stage) == ("succeeded", version, "candidate")


async def test_train_from_confirmed_labels_the_charts_default(
    stack_env: Path, stack_settings: Settings, tiny_train_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`args: [--from-labels]` in charts/linesight/values.yaml: the labels confirmed in the labeling UI."""
    store = ObjectStore(S3Config.from_settings(stack_settings))
    async with service_running("training", REGISTRY_ONLY, settings=stack_settings) as svc:
        db = svc.ctx.db
        assert db is not None
        try:
            async with db.connection() as conn:
                await conn.execute("DELETE FROM confirmed_labels")
            for i, sample in enumerate(load_manifest(tiny_train_set, unknown_columns="ignore")):
                ref = await store.aput_content_addressed("frames", sample.image.read_bytes())
                async with db.connection() as conn, conn.transaction():
                    await registry.upsert_label(conn, {
                        "frame_id": f"f{i:03d}", "label": sample.label, "image_bucket": ref.bucket,
                        "image_key": ref.key, "station": "station1", "labeler": "l", "reviewer": "r",
                    })  # fmt: skip
            product = f"lbl{uuid.uuid4().hex[:6]}"
            code = await asyncio.to_thread(
                main, ["train", "--from-labels", "--product", product, "--input-size", "64"]
            )
            out, err = capsys.readouterr()
            assert code == 0, err
            assert "the confirmed labels" in err and f"for {product}: candidate" in out
            assert [m.stage for m in await svc.app.list_models(product)] == ["candidate"]
        finally:
            async with db.connection() as conn:
                await conn.execute("DELETE FROM confirmed_labels")


@pytest.mark.parametrize(
    ("variable", "server"),
    [("LINESIGHT_NATS_URL", "NATS"), ("LINESIGHT_S3_ENDPOINT", "S3"), ("LINESIGHT_PG_DSN", "PostgreSQL")],
)
def test_train_names_the_unreachable_server(
    stack_env: Path,
    tiny_train_set: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    server: str,
) -> None:
    port = free_port()  # nothing listens there; the other two servers are the real ones
    dead = {
        "LINESIGHT_NATS_URL": f"nats://127.0.0.1:{port}",
        "LINESIGHT_S3_ENDPOINT": f"127.0.0.1:{port}",
        "LINESIGHT_PG_DSN": f"postgresql://linesight@127.0.0.1:{port}/linesight",
    }[variable]
    monkeypatch.setenv(variable, dead)
    code = main(["train", "--dataset", str(tiny_train_set), "--product", "unreachable"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "the stack is unreachable" in err and server in err and str(port) in err, err
