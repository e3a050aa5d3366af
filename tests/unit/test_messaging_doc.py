"""docs/messaging.md's bus table is what the code publishes and consumes, and the generator refuses
to guess: a bus call it cannot resolve is an error naming the file and line."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import re
import shutil
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_messaging_doc", ROOT / "tools" / "gen_messaging_doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_tool()


@functools.cache
def _calls() -> list[Any]:
    """The resolved bus calls of the real tree (one AST pass for every test)."""
    return gen.Resolver(gen.PACKAGE_DIR).calls()


def test_docs_table_matches_the_code() -> None:
    current = gen.DOC.read_text()
    wanted = gen.render_doc(current, gen.render_table())
    diff = "\n".join(
        difflib.unified_diff(current.splitlines(), wanted.splitlines(), "docs", "code", lineterm="")
    )
    assert current == wanted, f"docs/messaging.md differs from the code; run `make docs`:\n{diff}"


def test_every_bus_call_site_is_found() -> None:
    """Every `.consume(` / `.consume_in_background(` / `.subscribe(` line in the services is a row."""
    resolver = gen.Resolver(gen.PACKAGE_DIR)
    lines = {c.where for c in resolver.calls()} | resolver.mqtt_sites  # MQTT: the broker, not the bus
    assert any(c.role == "producer" for c in _calls())
    assert any(c.role == "consumer" for c in _calls())
    for path in gen.PACKAGE_DIR.rglob("*.py"):
        rel = path.relative_to(gen.PACKAGE_DIR)
        if rel.parts[0] in gen.SKIPPED_PACKAGES:
            continue
        for n, text in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{n}"
            if any(f".{m}(" in text for m in (*gen.CONSUME_METHODS, *gen.SUBSCRIBE_METHODS)):
                assert where in lines, f"{where}: consume call not in the table"


def _package(tmp_path: Path, code: str, common: dict[str, str] | None = None) -> Path:
    """A minimal linesight tree: the real common/ bus API and subjects (plus `common` extra
    modules), and one service module."""
    pkg = tmp_path / "linesight"
    (pkg / "common").mkdir(parents=True)
    for name in ("__init__.py", "subjects.py", "bus.py", "service.py", "ports.py"):
        shutil.copy(gen.PACKAGE_DIR / "common" / name, pkg / "common" / name)
    for name, text in (common or {}).items():
        (pkg / "common" / name).write_text(textwrap.dedent(text))
    (pkg / "__init__.py").write_text("")
    (pkg / "demo").mkdir()
    (pkg / "demo" / "__init__.py").write_text("")
    (pkg / "demo" / "app.py").write_text(textwrap.dedent(code))
    return pkg


def test_unresolvable_subject_is_an_error_with_file_and_line(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        """\
        from linesight.common.bus import Bus
        from linesight.common.pb import events_pb2


        async def send(bus: Bus, subject: str) -> None:
            await bus.publish(subject.upper(), events_pb2.FrameCaptured())
        """,
    )
    with pytest.raises(gen.UnresolvedError, match=r"linesight/demo/app\.py:6: publish: subject"):
        gen.render_table(pkg)


def test_subject_and_payload_stay_paired_per_call_site(tmp_path: Path) -> None:
    """Two call sites of one helper give two rows, not the cross product."""
    pkg = _package(
        tmp_path,
        """\
        from google.protobuf.message import Message

        from linesight.common import subjects
        from linesight.common.bus import Bus
        from linesight.common.pb import events_pb2


        class Sender:
            def __init__(self, bus: Bus) -> None:
                self.bus = bus

            async def _send(self, subject: str, message: Message) -> None:
                await self.bus.publish(subject, message)

            async def both(self) -> None:
                await self._send(subjects.plant_subject("p", subjects.DRIFT_ALERT), events_pb2.DriftAlert())
                alarm = events_pb2.CaptureAlarm()
                await self._send(subjects.station_subject("p", "l", "s", subjects.CAPTURE_ALARM), alarm)
        """,
    )
    calls = {(c.event, c.payload, c.role, c.service) for c in gen.Resolver(pkg).calls()}
    assert calls == {
        ("DRIFT_ALERT", "DriftAlert", "producer", "demo"),
        ("CAPTURE_ALARM", "CaptureAlarm", "producer", "demo"),
    }


def test_architecture_diagram_draws_the_real_subscriptions() -> None:
    """Solid bus arrows between services in docs/architecture.md are exactly the code's
    (producer, consumer, payload) triples: no arrow for a consumer that does not exist."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    diagram = text.split("```mermaid", 1)[1].split("```", 1)[0]
    services = {p.parent.name for p in gen.PACKAGE_DIR.glob("*/__main__.py")}
    nodes = dict(re.findall(r"\b([A-Z0-9]+)\[([a-z]+)\]", diagram))
    drawn: set[tuple[str, str, str]] = set()
    for src, label, dst in re.findall(r"\b([A-Z0-9]+)(?:\[[^\]]*\])? -->\|([^|]*)\| ([A-Z0-9]+)\b", diagram):
        payload = label.split("\\n")[0].split()[0]
        if nodes.get(src) in services and nodes.get(dst) in services:
            drawn.add((nodes[src], nodes[dst], payload))
    calls = _calls()
    real = {
        (p.service, c.service, p.payload)
        for p in calls
        if p.role == "producer"
        for c in calls
        if c.role == "consumer" and c.event == p.event
    }
    assert drawn == real, f"diagram only: {sorted(drawn - real)}; code only: {sorted(real - drawn)}"


def test_a_common_helper_that_forwards_its_subject_is_a_bus_call(tmp_path: Path) -> None:
    """Moving a subscription into a helper in linesight.common keeps its callers' rows."""
    pkg = _package(
        tmp_path,
        """\
        from linesight.common import subjects
        from linesight.common.bus import Bus
        from linesight.common.follow import follow
        from linesight.common.pb import events_pb2


        async def start(bus: Bus) -> None:
            subject = subjects.plant_subject("p", subjects.MODEL_PUBLISHED)
            await follow(bus, subject, events_pb2.ModelPublished)
        """,
        common={
            "follow.py": """\
            from typing import Any


            async def follow(bus: Any, subject: str, message_type: Any) -> None:
                await bus.jetstream.subscribe(subject, cb=lambda msg: message_type.FromString(msg.data))
            """
        },
    )
    calls = {(c.event, c.payload, c.role, c.service) for c in gen.Resolver(pkg).calls()}
    assert calls == {("MODEL_PUBLISHED", "ModelPublished", "consumer", "demo")}
