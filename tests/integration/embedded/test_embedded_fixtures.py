"""The shared session fixtures give real, working servers."""

from __future__ import annotations

import io
import uuid

import minio
import nats
import psycopg
import pytest

pytestmark = pytest.mark.integration


async def test_nats_fixture_has_jetstream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.account_info()
        assert info.limits is not None
        stream = f"T{uuid.uuid4().hex[:8]}"
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        ack = await js.publish(f"{stream}.x", b"hello", headers={"Nats-Msg-Id": "1"})
        dup = await js.publish(f"{stream}.x", b"hello", headers={"Nats-Msg-Id": "1"})
        assert ack.seq == 1 and dup.duplicate
    finally:
        await nc.close()


def test_pg_fixture_answers(pg_dsn: str) -> None:
    assert pg_dsn.startswith("postgresql://linesight@127.0.0.1:")
    with psycopg.connect(pg_dsn) as conn:
        user, db = conn.execute("SELECT current_user, current_database()").fetchone()  # type: ignore[misc]
        assert (user, db) == ("linesight", "linesight")
        conn.execute("CREATE SCHEMA IF NOT EXISTS fixture_check")
        conn.execute("CREATE TABLE IF NOT EXISTS fixture_check.t (v int)")
        conn.execute("INSERT INTO fixture_check.t VALUES (42)")
        assert conn.execute("SELECT max(v) FROM fixture_check.t").fetchone() == (42,)


def test_s3_fixture_put_get(s3) -> None:
    client = minio.Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=s3.secure, region=s3.region)
    bucket = f"fixture-{uuid.uuid4().hex[:8]}"
    client.make_bucket(bucket)
    client.put_object(bucket, "a/b.bin", io.BytesIO(b"payload"), 7)
    assert client.get_object(bucket, "a/b.bin").read() == b"payload"
    wrong = minio.Minio(s3.endpoint, "nobody", "wrong-secret", secure=False, region=s3.region)
    with pytest.raises(minio.error.S3Error):
        wrong.list_objects(bucket).__next__()


def test_stack_settings_point_at_fixtures(stack_settings, nats_url: str, pg_dsn: str, s3) -> None:
    assert stack_settings.nats_url == nats_url
    assert stack_settings.pg_dsn == pg_dsn
    assert stack_settings.s3_endpoint == s3.endpoint
    ports = [*stack_settings.grpc_ports.values(), *stack_settings.http_ports.values()]
    assert len(set(ports)) == len(ports) == 12
