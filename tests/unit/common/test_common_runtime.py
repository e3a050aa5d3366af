"""Pure parts of the shared runtime: headers, backoff, error mapping, config validation, logs."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import grpc
import pytest

from linesight.common import bus, db, grpcutil, health, storage, telemetry
from linesight.common.events import event_id_of, new_meta
from linesight.common.log import JsonFormatter, configure_logging
from linesight.common.pb import common_pb2, events_pb2


@pytest.fixture(scope="module", autouse=True)
def _telemetry() -> None:
    telemetry.setup_telemetry("unit-tests")


def test_headers_use_meta_event_id_type_name_and_traceparent() -> None:
    msg = events_pb2.FrameCaptured(meta=new_meta("capture"), frame_id="f1")
    with telemetry.tracer("t").start_as_current_span("produce"):
        eid, headers = bus.build_headers(msg, extra={"Ls-Station": "st1"})
        trace_id = telemetry.current_trace_id()
    assert eid == msg.meta.event_id == headers["Nats-Msg-Id"]
    assert headers["Ls-Type"] == "linesight.v1.FrameCaptured"
    assert headers["Ls-Station"] == "st1"
    version, tid, _span, flags = headers["traceparent"].split("-")
    assert (version, tid) == ("00", trace_id)
    assert int(flags, 16) & 1  # sampled


def test_headers_without_meta_use_given_or_fresh_uuid() -> None:
    ref = common_pb2.ObjectRef(bucket="b", key="k")
    eid, headers = bus.build_headers(ref, event_id="my-id")
    assert eid == "my-id" and headers["Ls-Type"] == "linesight.v1.ObjectRef"
    eid2, _ = bus.build_headers(ref)
    assert uuid.UUID(eid2).version == 4
    assert "traceparent" not in headers  # no span active


def test_conflicting_event_ids_and_bad_headers_are_errors() -> None:
    msg = events_pb2.FrameCaptured(meta=new_meta("capture"))
    with pytest.raises(ValueError, match=r"differs from meta\.event_id"):
        bus.build_headers(msg, event_id="other")
    with pytest.raises(ValueError, match="invalid header"):
        bus.build_headers(msg, extra={"X": "two\nlines"})
    with pytest.raises(ValueError, match="invalid publish subject"):
        bus.validate_publish_subject("linesight.*.frame.captured")


def test_new_meta_and_event_id_of() -> None:
    meta = new_meta("capture/st1", correlation_id="frame-9")
    assert meta.producer == "capture/st1" and meta.correlation_id == "frame-9"
    assert meta.emitted_at.seconds > 0
    assert event_id_of(events_pb2.InspectionResult(meta=meta)) == meta.event_id
    assert event_id_of(events_pb2.InspectionResult()) == ""
    with pytest.raises(ValueError):
        new_meta("")


def test_nak_backoff_grows_and_is_capped() -> None:
    delays = [bus.nak_delay_s(n) for n in range(1, 10)]
    assert delays[:3] == [0.5, 1.0, 2.0]
    assert delays == sorted(delays) and max(delays) == 30.0


def test_content_key_and_s3_config_validation() -> None:
    digest = storage.sha256_hex(b"abc")
    assert storage.content_key(digest) == f"{digest[:2]}/{digest}.png"
    with pytest.raises(ValueError, match="sha256"):
        storage.content_key("XYZ")
    with pytest.raises(ValueError, match="host:port"):
        storage.S3Config("http://127.0.0.1:9000", "a", "b")
    err = storage.ObjectNotFound("frames", "ab/cd.png")
    assert str(err) == "object s3://frames/ab/cd.png not found" and isinstance(err, KeyError)


def test_storage_rejects_bad_metadata_and_keys() -> None:
    store = storage.ObjectStore(storage.S3Config("127.0.0.1:1", "a", "b"))
    with pytest.raises(ValueError, match="metadata key"):
        store.put_bytes("frames", "k", b"x", metadata={"bad key": "v"})
    with pytest.raises(ValueError, match="metadata value"):
        store.put_bytes("frames", "k", b"x", metadata={"k": "ü"})
    with pytest.raises(ValueError, match="invalid object address"):
        store.get_bytes("frames", "../etc/passwd")
    with pytest.raises(ValueError, match="expires_s"):
        store.presigned_get_url("frames", "k", expires_s=8 * 24 * 3600)


def test_storage_down_is_a_clear_error_naming_the_object() -> None:
    store = storage.ObjectStore(storage.S3Config("127.0.0.1:1", "a", "b"), retries=0)
    with pytest.raises(storage.StorageUnavailable, match=r"s3://frames/ab/x.*127\.0\.0\.1:1"):
        store.get_bytes("frames", "ab/x")


def test_dsn_redaction_and_schema_names() -> None:
    assert db.redact_dsn("postgresql://u:secret@h:5/d?sslmode=off") == "postgresql://u@h:5/d?sslmode=off"
    assert "secret" not in db.redact_dsn("host=h user=u password=secret dbname=d")
    assert "secret" not in db.redact_dsn("postgresql://u@h/d?password=secret")
    assert db._yoyo_uri("postgresql://u@h:5/d", "labeling") == "postgresql+psycopg://u@h:5/d?schema=labeling"
    assert db._yoyo_uri("host=h port=5 user=u dbname=d", "mes") == "postgresql+psycopg://u@h:5/d?schema=mes"
    for bad in ("Capture", "a-b", "1x", "", "x;drop"):
        with pytest.raises(ValueError, match="invalid schema"):
            db.validate_schema(bad)


@pytest.mark.parametrize(
    ("code", "exc_type"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, grpcutil.InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, grpcutil.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, grpcutil.NotFound),
        (grpc.StatusCode.UNAVAILABLE, grpcutil.ServiceUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, grpcutil.ServiceUnavailable),
        (grpc.StatusCode.INTERNAL, grpcutil.ServiceError),
    ],
)
def test_grpc_status_maps_to_domain_errors(code: grpc.StatusCode, exc_type: type[Exception]) -> None:
    err = grpcutil.error_from_status(code, "details", "labeling GetResult at h:1")
    assert type(err) is exc_type
    assert "labeling GetResult at h:1" in str(err) and code.name in str(err)


def test_servicer_exceptions_map_to_status_codes() -> None:
    assert grpcutil.status_for_exception(ValueError("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpcutil.status_for_exception(grpcutil.NotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert grpcutil.status_for_exception(grpcutil.ServiceUnavailable("x")) == grpc.StatusCode.UNAVAILABLE
    assert grpcutil.status_for_exception(RuntimeError("x")) == grpc.StatusCode.INTERNAL


def test_json_log_line_carries_service_trace_and_extra_fields() -> None:
    fmt = JsonFormatter("capture")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "frame %s", ("f1",), None)
    record.frame_id = "f1"
    with telemetry.tracer("t").start_as_current_span("s"):
        line = json.loads(fmt.format(record))
        trace_id = telemetry.current_trace_id()
    assert line["service"] == "capture" and line["msg"] == "frame f1" and line["level"] == "INFO"
    assert line["trace_id"] == trace_id and line["frame_id"] == "f1"
    assert "trace_id" not in json.loads(fmt.format(record))


def test_unknown_log_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("capture", "LOUD")


def test_metrics_render_as_prometheus_text() -> None:
    counter = telemetry.meter("unit").create_counter("linesight_unit_frames", description="frames seen")
    counter.add(3, {"station": "st1"})
    hist = telemetry.meter("unit").create_histogram("linesight_unit_latency_ms")
    hist.record(12.0)
    text = telemetry.render_prometheus()
    assert "# TYPE linesight_unit_frames counter" in text
    assert 'linesight_unit_frames{station="st1"} 3' in text
    assert "linesight_unit_latency_ms_count 1" in text
    assert 'linesight_unit_latency_ms_bucket{le="+Inf"} 1' in text


async def test_readiness_names_failing_and_slow_checks() -> None:
    h = health.Health("svc", timeout_s=0.1)

    async def ok() -> None:
        return None

    async def down() -> None:
        raise ConnectionError("db down")

    async def slow() -> None:
        await asyncio.sleep(1)

    h.add("ok", ok)
    assert await h.readiness() == (True, {"ok": "ok"})
    h.add("db", down)
    h.add("slow", slow)
    ready, checks = await h.readiness()
    assert not ready
    assert checks["db"] == "ConnectionError: db down" and checks["slow"].startswith("timeout")
    with pytest.raises(ValueError, match="already registered"):
        h.add("ok", ok)
