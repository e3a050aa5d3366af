"""`linesight demo --exit --json`: the README's main job, end to end, as a user runs it.

The real command starts NATS, PostgreSQL, S3 and all six services on free ports in a private state
dir, trains through the training service on a small generated set, replays the latest batch through
capture -> inference -> labeling + MES (delivered to the demo's local webhook receiver, to the
Mosquitto broker the demo starts and through MES's OPC UA Machine Vision server), writes the summary
and stops everything. Every count asserted here is read back by the demo from the services or from
each adapter's receiving side (webhook receiver, MQTT subscriber, OPC UA client).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from linesight.common.embedded.mqtt import mosquitto_binary
from linesight.vision.data.synth import generate_dataset

from .conftest import E2EStack

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FRAMES = 16
DEMO_TIMEOUT_S = 540.0  # typical run: ~2-4 min on 2 busy cores (service start-up, training)


@pytest.mark.timeout(600)
def test_demo_runs_the_line_to_its_summary_and_leaves_nothing_running(e2e_stack: E2EStack) -> None:
    stack = e2e_stack
    if mosquitto_binary() is None:
        pytest.fail(
            "mosquitto is missing: the demo shows MQTT through Debian's broker; apt-get install mosquitto"
        )
    # Small on purpose: 4 batches of ~45 images at 128 px; the model trains on the 3 earlier ones.
    dataset = generate_dataset(stack.state_dir.parent / "dataset", n_good=80, per_class=25, seed=0, size=128)
    summary_path = stack.state_dir.parent / "summary.json"
    # The training service's release gate (state_dir/release_gate.yaml) keeps a model below its
    # thresholds as a shadow candidate that inference never serves. A set this small cannot reach
    # the default 0.8 defect recall, and this test is about the pipeline, not model quality: open it.
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    (stack.state_dir / "release_gate.yaml").write_text("min_defect_recall: 0.0\nmax_false_reject_rate: 1.0\n")

    t0 = time.monotonic()
    args = ["demo", "--dataset", str(dataset), "--frames", str(FRAMES), "--exit", "--json", str(summary_path)]
    args += ["--max-good", "60", "--max-per-class", "25", "--state-dir", str(stack.state_dir)]
    code, out, _ = stack.run(args, "demo", timeout=DEMO_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    left = stack.wait_no_leftovers()  # checked below, after the outcome (its message matters more)
    print(f"linesight demo took {elapsed:.0f}s\n{out}")
    logs = stack.service_log_tails("demo")
    context = f"exit {code}\n{out}\n{stack.stderr_tail('demo')}\n{logs}\nleft behind: {left}"
    assert code == 0, context
    assert "LineSight demo summary" in out, context
    assert summary_path.is_file(), context

    s = json.loads(summary_path.read_text())
    assert s["frames_captured"] == FRAMES, s
    assert s["results"] == FRAMES, s
    assert s["dispositions_delivered"] == FRAMES, s
    # Each MES adapter delivered every part, counted where it arrived (distinct keys / results).
    assert s["adapters"] == {"webhook": FRAMES, "mqtt": FRAMES, "opcua": FRAMES}, s
    assert not s["adapters_not_shown"] and not s["adapter_errors"], s
    assert f"MES webhook        {FRAMES} delivered" in out, context
    assert f"MES mqtt           {FRAMES} (mqtt://127.0.0.1:" in out, context
    assert f"MES opcua          {FRAMES} (opc.tcp://" in out, context
    assert sum(int(v) for v in s["verdicts"].values()) == FRAMES, s
    assert 0 <= s["review_queue"] <= s["results"], s
    p50, p99 = s["latency_ms"]["p50"], s["latency_ms"]["p99"]
    assert p50 is not None and p99 is not None, s
    assert 0 < float(p50) <= float(p99), s
    assert isinstance(s["model_version"], str) and s["model_version"].strip(), s
    # The line replays the latest batch only; the model never saw it.
    assert s["test_batches"] == ["b3"], s
    assert sum(s["train_images"].values()) > 0 and sum(s["replay_images"].values()) > 0, s

    # Nothing started by the demo survives it: servers, their children (postgres backends, weed
    # workers), services, the MES receiver thread's process, the demo's Mosquitto.
    stack.assert_seen_whole_stack()
    assert not left, "left behind by `linesight demo --exit`:\n" + "\n".join(left)
    # The demo runs its stack in <state dir>/demo, fresh for every run.
    assert (Path(stack.state_dir) / "demo" / "logs").is_dir(), (
        "the demo's stack did not run in <state dir>/demo"
    )
    assert not list(Path(stack.state_dir).glob("**/run/*.pid")), "pid files left in the state dir"
    assert not stack.leftover_sockets(), f"weed sockets left: {stack.leftover_sockets()}"
