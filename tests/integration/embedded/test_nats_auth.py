"""The embedded stack's NATS server (`NatsServer.from_settings`, what `linesight up` starts): no
anonymous access, one user per service, and the server itself refuses a result that any user but
inference publishes, the forgery measured on the open bus (a PASS for parts sent to review)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest

from linesight.common import subjects
from linesight.common.bus import PROVISIONER_USER, Bus, BusUnavailable, Delivery, inbox_prefix
from linesight.common.consumers import (
    ConsumerMissing,
    ConsumerSpec,
    differs,
    ensure_consumers,
    inference_durable,
    plant_consumers,
    require_consumer,
)
from linesight.common.embedded import free_port
from linesight.common.embedded.nats import NatsServer
from linesight.common.embedded.nats_auth import (
    CONSUMES,
    CREDENTIALS_FILE,
    OPERATOR_USER,
    PUBLISHES,
    InstallationCredentials,
    load_or_create_credentials,
    settings_as,
)
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.provision import provision_streams
from linesight.common.settings import Settings
from linesight.common.subjects import StreamSpec
from linesight.mes.api.bus import DURABLE as MES_DURABLE
from linesight.mes.api.bus import result_subject as mes_result_subject
from linesight.mes.app.dispatch import DispatchConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secured(embedded_root: Path) -> Iterator[tuple[NatsServer, InstallationCredentials, Settings]]:
    state = embedded_root / f"nats-auth-{uuid.uuid4().hex[:6]}"
    settings = Settings(state_dir=state, nats_port=free_port(also_free=(4000,)))
    server = NatsServer.from_settings(settings)
    server.start()
    settings = settings.model_copy(update={"nats_url": server.url})
    # What `linesight up` does next: the provisioner creates the streams (services may not).
    created = asyncio.run(provision_streams(settings_as(settings, PROVISIONER_USER), wait_s=10))
    assert created and all(c.startswith("created ") for c in created)
    yield server, load_or_create_credentials(state), settings
    server.stop()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_anonymous_and_wrong_password_are_refused(
    secured: tuple[NatsServer, InstallationCredentials, Settings],
) -> None:
    server, creds, settings = secured
    for user, password in (("", ""), ("inference", "guess"), ("mallory", creds.nats_password("inference"))):
        with pytest.raises(BusUnavailable, match="cannot connect"):
            await Bus.connect(server.url, "intruder", user=user, password=password, connect_attempts=1)
    # The secrets stay with the owner: credentials and the server's config are 0600.
    assert _mode(settings.state_dir / CREDENTIALS_FILE) == 0o600
    assert _mode(server.config_path) == 0o600
    # Generated once per installation, then stable.
    assert load_or_create_credentials(settings.state_dir) == creds
    assert creds.s3_access_key != "linesight" and creds.s3_secret_key != "linesight-secret"


async def test_only_inference_can_put_a_result_on_the_bus(
    secured: tuple[NatsServer, InstallationCredentials, Settings],
) -> None:
    server, _, settings = secured
    plant = f"forge{uuid.uuid4().hex[:6]}"
    subject = subjects.station_subject(plant, "line1", "station1", subjects.INSPECTION_RESULT)
    inference = await Bus.connect_as(settings_as(settings, "inference"), "inference")
    await inference.ensure_streams()
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    capture_settings = settings_as(settings, "capture")
    forger = await nats.connect(
        server.url,
        user="capture",
        password=capture_settings.nats_password,
        inbox_prefix="_INBOX.capture",
        error_cb=on_error,
        max_reconnect_attempts=1,
    )
    try:
        forged = events_pb2.InspectionResult(
            meta=new_meta("inference"), frame_id="f-forged", verdict=common_pb2.VERDICT_PASS
        )
        js = forger.jetstream(timeout=1.5)
        with pytest.raises(nats.errors.TimeoutError):  # the server drops it: no stream ever stores it
            await js.publish(subject, forged.SerializeToString())
        assert any("permissions violation for publish" in v.lower() and subject in v for v in violations)

        genuine = events_pb2.InspectionResult(meta=new_meta("inference/station1"), frame_id="f-genuine")
        await inference.publish(subject, genuine)
        reader = await Bus.connect_as(settings_as(settings, OPERATOR_USER), "reader")  # read-only tools
        stored = await reader.jetstream.get_last_msg("INSPECTIONS", subject)
        kept = events_pb2.InspectionResult.FromString(stored.data or b"")
        assert kept.frame_id == "f-genuine" and kept.meta.producer == "inference/station1"

        # A service that mislabels its events is corrected by the bus: producer = its NATS user.
        capture = await Bus.connect_as(capture_settings, "capture")
        try:
            alarm_subject = subjects.station_subject(plant, "line1", "station1", subjects.CAPTURE_ALARM)
            await capture.publish(alarm_subject, events_pb2.CaptureAlarm(meta=new_meta("inference/x")))
            alarm = await reader.jetstream.get_last_msg("ALERTS", alarm_subject)
            assert events_pb2.CaptureAlarm.FromString(alarm.data or b"").meta.producer == "capture/x"
        finally:
            await capture.close()
            await reader.close()
    finally:
        await forger.close()
        await inference.close()


@pytest.mark.parametrize("service", list(PUBLISHES))
async def test_each_service_can_do_what_it_does(
    service: str, secured: tuple[NatsServer, InstallationCredentials, Settings]
) -> None:
    """The permissions are not so tight that a service breaks: it finds the provisioned streams,
    publishes each of its events and consumes (and acknowledges) each event it reads, as its own
    user."""
    _, _, settings = secured
    plant = f"p{uuid.uuid4().hex[:6]}"
    bus = await Bus.connect_as(settings_as(settings, service), service, publish_timeout_s=3)
    others = {svc: await Bus.connect_as(settings_as(settings, svc), svc) for svc in PUBLISHES}
    provisioner = await Bus.connect_as(settings_as(settings, PROVISIONER_USER), PROVISIONER_USER)
    try:
        await bus.ensure_streams()
        for event in PUBLISHES[service]:
            await bus.publish(_subject(plant, event), events_pb2.CaptureAlarm(meta=new_meta(service)))
        for event in CONSUMES[service]:
            producer = next(svc for svc, events in PUBLISHES.items() if event in events)
            await others[producer].publish(
                _subject(plant, event), events_pb2.CaptureAlarm(meta=new_meta(producer))
            )
            got: list[str] = []
            stop = asyncio.Event()

            async def handle(
                msg: events_pb2.CaptureAlarm,
                delivery: Delivery,
                got: list[str] = got,
                stop: asyncio.Event = stop,
            ) -> None:
                got.append(delivery.subject)
                stop.set()

            durable = f"t-{service}-{uuid.uuid4().hex[:6]}"
            # durable consumers are the provisioner's (consumers.plant_consumers in production)
            spec = ConsumerSpec(service, durable, (_subject(plant, event),))
            assert await ensure_consumers(provisioner.jetstream, [spec]) == [f"created consumer {durable}"]
            task = bus.consume_in_background(
                _subject(plant, event), durable, events_pb2.CaptureAlarm, handle, stop=stop
            )
            await asyncio.wait_for(task, 15)
            assert got == [_subject(plant, event)]
    finally:
        await bus.close()
        await provisioner.close()
        for other in others.values():
            await other.close()


def _subject(plant: str, event: str) -> str:
    if event in subjects.STATION_EVENTS:
        return subjects.station_subject(plant, "line1", "station1", event)
    return subjects.plant_subject(plant, event)


async def test_only_the_provisioner_creates_or_changes_streams(
    secured: tuple[NatsServer, InstallationCredentials, Settings],
) -> None:
    """A service user can neither create a stream (one that would capture another service's
    subjects, say) nor change a provisioned one; the provisioner can, and services then find it."""
    _, _, settings = secured
    name = f"SHADOW{uuid.uuid4().hex[:6].upper()}"
    spec = StreamSpec(name, (f"shadow{uuid.uuid4().hex[:6]}.>",), 3600.0, 1 << 20, 120.0, "test", ())
    capture = await Bus.connect_as(settings_as(settings, "capture"), "capture", publish_timeout_s=2)
    provisioner = await Bus.connect_as(settings_as(settings, PROVISIONER_USER), "provisioner")
    try:
        assert not capture.provisions and provisioner.provisions
        with pytest.raises(BusUnavailable, match="may not create it"):
            await capture.ensure_streams([spec], wait_s=1.0)
        with pytest.raises(nats.errors.TimeoutError):  # the server drops the request
            await capture.jetstream.add_stream(name=name, subjects=list(spec.subjects))
        frames = await capture.jetstream.stream_info("FRAMES")  # reading the layout is allowed
        with pytest.raises(nats.errors.TimeoutError):
            await capture.jetstream.update_stream(frames.config)
        assert await provisioner.ensure_streams([spec]) == [f"created {name}"]
        assert await provisioner.ensure_streams([spec]) == []  # unchanged: no update
        assert await capture.ensure_streams([spec], wait_s=1.0) == []
        bigger = dataclasses.replace(spec, max_bytes=2 << 20)  # a new version's layout
        assert await capture.ensure_streams([bigger], wait_s=1.0) == []  # warns, changes nothing
        assert (await capture.jetstream.stream_info(name)).config.max_bytes == 1 << 20
        assert await provisioner.ensure_streams([bigger]) == [f"updated {name}"]
        assert (await capture.jetstream.stream_info(name)).config.max_bytes == 2 << 20
    finally:
        await capture.close()
        await provisioner.close()


async def test_the_provisioner_creates_every_durable_consumer_services_bind_to(
    secured: tuple[NatsServer, InstallationCredentials, Settings],
) -> None:
    """`linesight up` (and the chart's Job) leave every consumer of the plant in place with the
    services' settings: a service's own start changes nothing, a second provisioning neither; a
    consumer nobody provisioned is reported naming the provisioning step."""
    _, _, settings = secured
    specs = plant_consumers(settings.plant)
    mes = await Bus.connect_as(settings_as(settings, "mes"), "mes")
    inference = await Bus.connect_as(settings_as(settings, "inference"), "inference")
    reader: dict[str, Bus] = {"mes": mes, "inference": inference}
    try:
        for spec in specs:
            # Each service user may read its own streams' consumers; the operator reads them all.
            bus = reader.get(spec.service) or await _operator(settings, reader)
            info = await bus.jetstream.consumer_info(spec.stream, spec.durable)
            assert differs(info.config, spec.config()) == [], spec.durable
        # MES starting as it does (mes/service.py) binds to it: nothing changes.
        stop = asyncio.Event()
        task = mes.consume_in_background(
            mes_result_subject(settings.plant),
            MES_DURABLE,
            events_pb2.InspectionResult,
            _ignore,
            batch=32,
            ack_wait_s=DispatchConfig(endpoint="x").reject_window_s / 2,
            stop=stop,
        )
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(task, 10)
        mes_spec = next(s for s in specs if s.durable == MES_DURABLE)
        info = await mes.jetstream.consumer_info(mes_spec.stream, MES_DURABLE)
        assert differs(info.config, mes_spec.config()) == [] and info.config.ack_wait == 2.5
        again = await provision_streams(settings_as(settings, PROVISIONER_USER), wait_s=10)
        assert again == []  # streams and consumers unchanged
        missing = ConsumerSpec(
            "inference", inference_durable(f"g{uuid.uuid4().hex[:6]}"), (specs[0].filters[0],), 2.5
        )
        with pytest.raises(ConsumerMissing, match=r"python -m linesight\.common\.provision"):
            await require_consumer(inference.jetstream, missing, wait_s=1.0)
    finally:
        await mes.close()
        await inference.close()
        if "operator" in reader:
            await reader["operator"].close()


async def _operator(settings: Settings, cache: dict[str, Bus]) -> Bus:
    if "operator" not in cache:
        cache["operator"] = await Bus.connect_as(settings_as(settings, OPERATOR_USER), "operator")
    return cache["operator"]


async def _ignore(msg: events_pb2.InspectionResult, delivery: Delivery) -> None:
    """Never called: the test publishes no result on this plant."""
    raise AssertionError(f"unexpected {delivery.subject}")


async def test_a_service_cannot_create_or_rewrite_a_durable_consumer(
    secured: tuple[NatsServer, InstallationCredentials, Settings],
) -> None:
    """Durable consumers on a shared stream are other services' state: labeling reads results
    too, but cannot rewrite MES's consumer (a one-second ack wait would redeliver every result
    while MES still sends it), by the named create, the legacy durable create, or a durable name
    in an unnamed create; and a service's consume of a consumer nobody provisioned fails naming
    the provisioning step instead of creating it."""
    _, _, settings = secured
    spec = next(s for s in plant_consumers(settings.plant) if s.durable == MES_DURABLE)
    hostile = dataclasses.replace(spec, ack_wait_s=1.0).config()
    labeling = await Bus.connect_as(settings_as(settings, "labeling"), "labeling", publish_timeout_s=2)
    creds = settings_as(settings, "labeling")
    raw = await nats.connect(
        settings.nats_url,
        user=creds.nats_user,
        password=creds.nats_password,
        inbox_prefix=inbox_prefix("labeling").encode(),
    )
    try:
        with pytest.raises(nats.errors.TimeoutError):  # named create: the server drops it
            await labeling.jetstream.add_consumer(spec.stream, hostile)
        legacy = dataclasses.replace(hostile, name=None)
        with pytest.raises(nats.errors.TimeoutError):  # $JS.API.CONSUMER.DURABLE.CREATE
            await labeling.jetstream.add_consumer(spec.stream, legacy)
        body = {"stream_name": spec.stream, "config": hostile.as_dict()}
        reply = await raw.request(
            f"$JS.API.CONSUMER.CREATE.{spec.stream}", json.dumps(body).encode(), timeout=2
        )
        assert "error" in json.loads(reply.data), reply.data  # an unnamed create may not name a durable
        info = await labeling.jetstream.consumer_info(spec.stream, MES_DURABLE)
        assert differs(info.config, spec.config()) == [] and info.config.ack_wait == spec.ack_wait_s
        labeling.consumer_wait_s = 1.0
        with pytest.raises(BusUnavailable, match=r"python -m linesight\.common\.provision"):
            await labeling.consume(
                spec.filters[0],
                f"labeling-unprovisioned-{uuid.uuid4().hex[:6]}",
                events_pb2.InspectionResult,
                _ignore,
            )
    finally:
        await raw.close()
        await labeling.close()
