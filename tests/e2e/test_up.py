"""`linesight up` as a user runs it: every service ready, Ctrl-C stops everything, state survives.

The real console command runs in a subprocess with its own state dir and every port free and
explicit. The stack is started twice on the same state dir (SIGINT after the first run, SIGTERM
after the second); what the first run wrote to PostgreSQL, S3 and JetStream is read back in the
second. Faults: a second `up` on a running state dir and an unknown LINESIGHT_ variable.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
import yaml

from linesight.common.bus import Bus, BusUnavailable
from linesight.common.clients import TaxonomyClient
from linesight.common.embedded.nats_auth import load_or_create_credentials
from linesight.common.identity.config import AuthSettings
from linesight.common.identity.installation import installation_signer
from linesight.common.identity.model import Grant, Principal, Role
from linesight.common.settings import SERVICE_PORTS

from .conftest import E2EStack, linesight_command, stop_process

T = TypeVar("T")

UP_TIMEOUT_S = 300.0  # all six services import torch & co.; 2 busy cores


class UpRun:
    """A running `linesight up`: its stdout collected by a thread, so the pipe never fills."""

    def __init__(self, stack: E2EStack, name: str) -> None:
        self.stack = stack
        self.name = name
        self.proc = stack.popen(["up", "--state-dir", str(stack.state_dir)], name)
        self.lines: list[str] = []
        self.up = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Press Ctrl-C" in line:
                self.up.set()

    @property
    def stdout(self) -> str:
        return "".join(self.lines)

    def context(self) -> str:
        return (
            f"--- stdout of {self.name} ---\n{self.stdout}\n{self.stack.stderr_tail(self.name)}\n"
            f"{self.stack.service_log_tails()}"
        )

    def wait_up(self, timeout: float = UP_TIMEOUT_S) -> float:
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not self.up.wait(0.5):
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"linesight up exited with {self.proc.returncode} before it was up\n"
                                     + self.context())  # fmt: skip
            if time.monotonic() > deadline:
                stop_process(self.proc, signal.SIGINT, 60)
                raise AssertionError(f"linesight up was not up within {timeout:.0f}s\n" + self.context())
        return time.monotonic() - t0

    def stop(self, sig: int) -> int | None:
        code = stop_process(self.proc, sig, 120)
        self._reader.join(10)
        return code


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def _assert_ready_and_printed(run: UpRun) -> None:
    stack = run.stack
    out = run.stdout
    assert "LineSight is up:" in out, run.context()
    assert f"http://127.0.0.1:{stack.http_ports['labeling']}/" in out, run.context()
    assert stack.pg_dsn in out and f"nats://127.0.0.1:{stack.nats_port}" in out, run.context()
    assert f"127.0.0.1:{stack.s3_port}" in out, run.context()
    for svc in SERVICE_PORTS:
        line = next((ln for ln in run.lines if ln.strip().startswith(f"{svc} health")), "")
        assert f"{stack.http_url(svc)}/healthz" in line, f"no health URL printed for {svc}\n{run.context()}"
        assert stack.grpc_target(svc) in line, run.context()
        assert _get(f"{stack.http_url(svc)}/readyz") == 200, f"{svc} /readyz is not 200\n{run.context()}"
        assert _get(f"{stack.http_url(svc)}/healthz") == 200, f"{svc} /healthz is not 200\n{run.context()}"


def _taxonomy_doc(product: str) -> str:
    from linesight.taxonomy.service import bundled_dir

    doc = yaml.safe_load((bundled_dir() / "default.yaml").read_text())
    doc["product"], doc["version"] = product, "7"
    return yaml.safe_dump(doc, sort_keys=False)


def _taxonomy(stack: E2EStack, use: Callable[[TaxonomyClient], Awaitable[T]]) -> T:
    """Run `use` with a TaxonomyClient of the stack (the tests here are synchronous)."""

    async def run() -> T:
        token = _admin_token(stack)
        async with TaxonomyClient(stack.grpc_target("taxonomy"), timeout_s=30, token=token) as client:
            return await use(client)

    return asyncio.run(run())


def _admin_token(stack: E2EStack) -> str:
    """What a local tool holding the state dir can do: sign a token with the installation key."""
    signer = installation_signer(AuthSettings(), stack.state_dir, ttl_s=600)
    grants = tuple(Grant(role) for role in Role)
    return signer.issue(Principal("e2e", "e2e operator", "user", grants)).token


def _assert_bus_closed_to_strangers(run: UpRun) -> None:
    """`up` generated the installation's secrets, prints none of them, and its NATS refuses an
    anonymous client (the open bus let anyone publish a PASS for any part)."""
    stack = run.stack
    creds = load_or_create_credentials(stack.state_dir)
    printed = run.stdout + stack.stderr_text(run.name)
    for secret in (*creds.nats_passwords.values(), creds.s3_secret_key):
        assert secret not in printed, "linesight up printed a secret"
    assert creds.s3_secret_key != "linesight-secret"

    async def anonymous() -> None:
        await Bus.connect(f"nats://127.0.0.1:{stack.nats_port}", "stranger", connect_attempts=1)

    with pytest.raises(BusUnavailable, match="cannot connect"):
        asyncio.run(anonymous())


def _jetstream_messages(stack: E2EStack) -> dict[str, int]:
    """Messages per JetStream stream, from the NATS monitor (client port + 4000)."""
    url = f"http://127.0.0.1:{stack.nats_port + 4000}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=5) as r:
        data = json.load(r)
    out: dict[str, int] = {}
    for account in data.get("account_details") or []:
        for st in account.get("stream_detail") or []:
            out[st["name"]] = int(st["state"]["messages"])
    return out


def _s3_object(stack: E2EStack, bucket: str, key: str) -> bytes:
    import minio

    creds = load_or_create_credentials(stack.state_dir)  # generated by the first `up`
    client = minio.Minio(
        f"127.0.0.1:{stack.s3_port}",
        creds.s3_access_key,
        creds.s3_secret_key,
        secure=False,
        region="us-east-1",
    )
    resp = client.get_object(bucket, key)
    try:
        return bytes(resp.read())
    finally:
        resp.close()
        resp.release_conn()


def _capture_profile(stack: E2EStack) -> Path:
    """A station profile whose source replays a tiny generated set (the capture service needs one)."""
    from linesight.vision.data.synth import generate_dataset

    dataset = generate_dataset(stack.state_dir.parent / "replay", n_good=6, per_class=2, seed=1, size=64)
    profile = stack.state_dir.parent / "station.yaml"
    profile.write_text(
        yaml.safe_dump(
            {"plant": "plant1", "line": "line1", "station": "station1", "source": "replay"}
            | {"source_uri": str(dataset), "trigger_mode": "software"}
        )
    )
    return profile


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_up_ctrl_c_leaves_nothing_and_state_survives_a_restart(e2e_stack: E2EStack) -> None:
    stack = e2e_stack
    # A station profile that replays a tiny set (the no-configuration default is covered below).
    stack.env["LINESIGHT_CAPTURE_PROFILE"] = str(_capture_profile(stack))
    product = f"e2e-{uuid.uuid4().hex[:8]}"
    text = _taxonomy_doc(product)

    # --- first run: up, every service ready, write state, a second `up` is refused, Ctrl-C ------
    first = UpRun(stack, "up-1")
    took = first.wait_up()
    print(f"first `linesight up` ready in {took:.0f}s")
    _assert_ready_and_printed(first)
    _assert_bus_closed_to_strangers(first)
    stack.snapshot()
    stack.assert_seen_whole_stack()

    with psycopg.connect(stack.pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE e2e_kept (v text)")
        conn.execute("INSERT INTO e2e_kept VALUES ('survives')")
    published = _taxonomy(stack, lambda c: c.publish_taxonomy(product, text))
    assert published.product == product and published.version == "7"
    assert published.document.key, "the taxonomy document was not stored in S3"
    streams_before = _jetstream_messages(stack)
    assert sum(streams_before.values()) > 0, streams_before

    t0 = time.monotonic()
    second = subprocess.run(
        [*linesight_command(), "up", "--state-dir", str(stack.state_dir)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    refused_in = time.monotonic() - t0
    assert second.returncode != 0, second
    assert "already running" in second.stderr and str(stack.state_dir) in second.stderr, second.stderr
    assert "linesight down" in second.stderr, second.stderr
    assert refused_in < 60, f"the second `up` took {refused_in:.0f}s to refuse"
    # ... and it did not disturb the first one.
    assert first.proc.poll() is None, first.context()
    for svc in SERVICE_PORTS:
        assert _get(f"{stack.http_url(svc)}/readyz") == 200, f"{svc} not ready after the refused second up"

    t0 = time.monotonic()
    code = first.stop(signal.SIGINT)
    print(f"Ctrl-C stopped the stack in {time.monotonic() - t0:.1f}s")
    assert code == 0, f"exit {code} after SIGINT\n{first.context()}"
    left = stack.wait_no_leftovers()
    assert not left, "left behind after Ctrl-C:\n" + "\n".join(left)
    assert not list((stack.state_dir / "run").glob("*.pid")), "pid files left after Ctrl-C"
    assert not stack.leftover_sockets(), f"weed sockets left after Ctrl-C: {stack.leftover_sockets()}"

    # --- second run on the same state dir: everything the first run wrote is still there ------
    again = UpRun(stack, "up-2")
    took = again.wait_up()
    print(f"second `linesight up` ready in {took:.0f}s")
    _assert_ready_and_printed(again)
    with psycopg.connect(stack.pg_dsn) as conn:
        assert conn.execute("SELECT v FROM e2e_kept").fetchone() == ("survives",)
    versions = _taxonomy(stack, lambda c: c.list_versions(product))
    assert versions == ["7"], versions
    doc = _taxonomy(stack, lambda c: c.get_taxonomy(product, "7"))
    assert doc.yaml == text
    stored = _s3_object(stack, published.document.bucket, published.document.key)
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(text.encode()).hexdigest()
    streams_after = _jetstream_messages(stack)
    for name, n in streams_before.items():
        assert streams_after.get(name, 0) >= n, (
            f"JetStream stream {name} lost messages: {n} -> {streams_after}"
        )

    code = again.stop(signal.SIGTERM)
    assert code == 0, f"exit {code} after SIGTERM\n{again.context()}"
    left = stack.wait_no_leftovers()
    assert not left, "left behind after SIGTERM:\n" + "\n".join(left)
    assert not list((stack.state_dir / "run").glob("*.pid")), "pid files left after SIGTERM"
    assert not stack.leftover_sockets(), f"weed sockets left after SIGTERM: {stack.leftover_sockets()}"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_up_with_no_configuration_starts_every_service(e2e_stack: E2EStack) -> None:
    """A newcomer's first run: plain `linesight up` (no profile, no dataset), then Ctrl-C.

    Capture then runs the line simulator (a generated set replayed per gRPC Trigger)."""
    run = UpRun(e2e_stack, "up-plain")
    try:
        run.wait_up()
        _assert_ready_and_printed(run)
        assert (e2e_stack.state_dir / "datasets" / "line-simulator" / "manifest.csv").is_file()
    finally:
        code = run.stop(signal.SIGINT)
    assert code == 0, run.context()
    left = e2e_stack.wait_no_leftovers()
    assert not left, "left behind after Ctrl-C:\n" + "\n".join(left)


@pytest.mark.integration
def test_up_unknown_linesight_variable_exits_2_naming_it(e2e_stack: E2EStack) -> None:
    stack = e2e_stack
    env = {**stack.env, "LINESIGHT_NATS_PROT": "4222"}
    code, out, err = stack.run(["up", "--state-dir", str(stack.state_dir)], "up-typo", timeout=120, env=env)
    assert code == 2, f"exit {code}\n{out}\n{err}"
    assert "LINESIGHT_NATS_PROT" in err and "LINESIGHT_NATS_PORT" in err, err  # names it, suggests the fix
    assert not (stack.state_dir / "run").exists() or not list((stack.state_dir / "run").glob("*.pid"))
    left = stack.wait_no_leftovers(timeout=5)
    assert not left, "\n".join(left)
