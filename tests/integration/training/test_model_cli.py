"""`linesight model` against the running training service (real NATS, PostgreSQL, S3): the
registry from the command line, as the local QA owner of the plant (the installation key)."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from linesight.cli.main import main
from linesight.common.embedded.config import settings_env
from linesight.common.settings import Settings
from tests.integration.training.test_model_promotion import Api, _register, _row
from tests.integration.training.test_registry_stages import PASSING, svc  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def env(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings_env(stack_settings).items():
        monkeypatch.setenv(name, value)


async def _cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))  # the command runs its own event loop


async def test_list_gate_promote_shadow_report_and_rollback_from_the_command_line(
    svc: Api,  # noqa: F811
    env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    product = f"cli{uuid.uuid4().hex[:6]}"
    first, second = (f"2000010100002{i}-{uuid.uuid4().hex[:8]}" for i in range(2))
    for version in (first, second):
        await _register(svc, replace(_row(product, version, "candidate"), metrics=PASSING))
    out = tmp_path / "out.json"

    assert await _cli("model", "list", "--product", product, "--json", str(out)) == 0
    assert {m["model_version"]: m["stage"] for m in json.loads(out.read_text())["models"]} == {
        first: "candidate", second: "candidate",
    }  # fmt: skip
    gate = tmp_path / "gate.yaml"
    gate.write_text("min_recall: {critical: 0.99}\n")
    assert await _cli("model", "gate", "--product", product, "--set", str(gate), "--reason", "policy") == 0
    capsys.readouterr()
    assert await _cli("model", "promote", first, "--reason", "ok") == 2  # refused: not eligible
    assert "recall[critical] not measured" in capsys.readouterr().err
    gate.write_text("min_defect_recall: 0.8\n")
    assert await _cli("model", "gate", "--product", product, "--set", str(gate), "--reason", "relaxed") == 0
    assert await _cli("model", "promote", first, "--reason", "ok", "--json", str(out)) == 0
    assert json.loads(out.read_text())["stage"] == "production"
    assert await _cli("model", "shadow", second, "--json", str(out)) == 0
    assert json.loads(out.read_text())["stage"] == "shadow"
    assert await _cli("model", "shadow-report", "--product", product, "--json", str(out)) == 0
    assert json.loads(out.read_text())["model_version"] == second
    page = tmp_path / "gate.html"
    assert await _cli("model", "gate-report", first, "--html", str(page), "--json", str(out)) == 0
    assert json.loads(out.read_text())["passed"] and page.read_text().startswith("<!doctype html>")
    assert await _cli("model", "promote", second, "--reason", "shadow looked fine") == 0
    assert (
        await _cli("model", "rollback", "--product", product, "--reason", "line 2", "--json", str(out)) == 0
    )
    rolled = json.loads(out.read_text())
    assert (rolled["model_version"], rolled["stage"]) == (first, "production")
    assert await _cli("model", "show", "nope") == 2
