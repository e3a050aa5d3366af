"""Inbound MES API against the real service (PostgreSQL, NATS, HTTP) and a real receiver: quality
holds change earlier parts through corrections and later parts at once, a release restores them,
part context pushed by MES makes an order hold reach a part, queries and per-endpoint delivery
status, plant-scoped permissions and per-client rate limits."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from linesight.common.embedded import free_port
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import RunningService, service_running
from linesight.common.settings import Settings
from linesight.mes.api.ratelimit import RateLimit
from linesight.mes.api.receiver import DispositionLog
from linesight.mes.app.adapters import WebhookEndpoint
from linesight.mes.app.dispatch import DispatchConfig, MesApp
from linesight.mes.service import MesOptions, make_setup
from tests.integration.mes.test_mes_outbox import PLANT, eventually, fast, receiver, result

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mes_settings(stack_settings: Settings) -> Settings:
    return stack_settings.model_copy(update={"plant": PLANT})


def in_batch(
    station: str, batch: str, disposition: int = common_pb2.DISPOSITION_REJECT
) -> events_pb2.InspectionResult:
    r = result(station, disposition)
    r.capture.batch = batch
    r.capture.captured_at.FromDatetime(datetime.now(UTC))
    return r


@contextlib.asynccontextmanager
async def mes_with_api(
    settings: Settings, config: DispatchConfig, *, endpoints: list[Any] | None = None, **kw: Any
) -> AsyncIterator[tuple[RunningService[MesApp], httpx.AsyncClient]]:
    options = MesOptions(config=config, endpoints=endpoints, consume=False, **kw)
    async with (
        service_running("mes", make_setup(options), settings=settings) as svc,
        httpx.AsyncClient(base_url=settings.http_url("mes"), timeout=30) as http,
    ):
        yield svc, http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_hold_mid_batch_corrects_earlier_parts_holds_later_ones_and_release_restores(
    mes_settings: Settings, mint: Any
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/dispositions"
    log = DispositionLog()
    batch, other = "B-hold-1", "B-free-1"
    # two endpoints (both the receiver): each keeps its own delivery record per message
    endpoints = [WebhookEndpoint(name="erp", url=url), WebhookEndpoint(name="mes2", url=url)]
    client = bearer(mint(f"mes_client@{PLANT}", subject="mes-erp", kind="service"))
    earlier = [in_batch("st-hold", batch) for _ in range(3)]
    earlier[1].disposition = common_pb2.DISPOSITION_PASS
    free = in_batch("st-hold", other)
    async with mes_with_api(mes_settings, fast(url), endpoints=endpoints) as (svc, http), receiver(port, log):
        for r in [*earlier, free]:
            assert await svc.app.enqueue(r)

        async def sent(keys: set[str]) -> bool:
            return keys <= set(log.snapshot())

        await eventually(lambda: sent({r.frame_id for r in [*earlier, free]}))

        reply = await http.post(
            f"/api/plants/{PLANT}/holds",
            json={"kind": "batch", "value": batch, "reason": "gauge drift on press 3"},
            headers=client,
        )
        assert reply.status_code == 201, reply.text
        hold = reply.json()["hold"]
        assert reply.json()["parts_changed"] == 3 and hold["active"] and hold["created_by"] == "mes-erp"
        hold_keys = {f"{r.frame_id}:hold:{hold['id']}" for r in earlier}
        await eventually(lambda: sent(hold_keys))
        got = log.snapshot()
        for r in earlier:
            body = got[f"{r.frame_id}:hold:{hold['id']}"]
            assert body["disposition"] == "hold" and body["correction_of"] == r.meta.event_id
            assert body["holds"] == [hold["id"]] and body["hold_reason"] == "gauge drift on press 3"
        assert got[f"{earlier[1].frame_id}:hold:{hold['id']}"]["held_disposition"] == "pass"
        assert not any(k.startswith(free.frame_id + ":") for k in got)  # another batch: untouched

        later = [in_batch("st-hold", batch, common_pb2.DISPOSITION_PASS) for _ in range(2)]
        for r in later:
            assert await svc.app.enqueue(r)
        await eventually(lambda: sent({r.frame_id for r in later}))
        got = log.snapshot()
        for r in later:  # held from the first message on: no correction needed
            assert got[r.frame_id]["disposition"] == "hold" and "correction_of" not in got[r.frame_id]
            assert got[r.frame_id]["held_disposition"] == "pass"

        q = await http.get(f"/api/plants/{PLANT}/results", params={"batch": batch}, headers=client)
        assert q.status_code == 200, q.text
        items = q.json()["items"]
        assert {i["frame_id"] for i in items} == {r.frame_id for r in [*earlier, *later]}
        assert {i["disposition"] for i in items} == {"hold"} and all(
            i["holds"] == [hold["id"]] for i in items
        )
        by_serial = await http.get(
            f"/api/plants/{PLANT}/results", params={"serial": free.capture.part_id}, headers=client
        )
        assert [i["frame_id"] for i in by_serial.json()["items"]] == [free.frame_id]

        status = (
            await http.get(f"/api/plants/{PLANT}/deliveries/{earlier[0].frame_id}", headers=client)
        ).json()
        assert status["state"] == "delivered" and status["correction_of"] == earlier[0].meta.event_id
        per_endpoint = {
            (e["delivery_key"], e["endpoint"]): e["outcome"] for e in status["attempts_by_endpoint"]
        }
        assert {e["endpoint"]: e["state"] for e in status["endpoints"]} == {
            "erp": "delivered",
            "mes2": "delivered",
        }
        assert per_endpoint == {
            (earlier[0].frame_id, "erp"): "delivered",
            (earlier[0].frame_id, "mes2"): "delivered",
            (f"{earlier[0].frame_id}:hold:{hold['id']}", "erp"): "delivered",
            (f"{earlier[0].frame_id}:hold:{hold['id']}", "mes2"): "delivered",
        }

        reply = await http.post(f"/api/plants/{PLANT}/holds/{hold['id']}/release", headers=client)
        assert reply.status_code == 200 and reply.json()["parts_changed"] == 5, reply.text
        assert not reply.json()["hold"]["active"]
        release_keys = {f"{r.frame_id}:release:{hold['id']}" for r in [*earlier, *later]}
        await eventually(lambda: sent(release_keys))
        got = log.snapshot()
        own = {r.frame_id: r for r in [*earlier, *later]}
        for frame_id, r in own.items():
            body = got[f"{frame_id}:release:{hold['id']}"]
            expected = "pass" if r.disposition == common_pb2.DISPOSITION_PASS else "reject"
            assert body["disposition"] == expected and body["released_hold"] == hold["id"]
            assert "holds" not in body
        again = await http.post(f"/api/plants/{PLANT}/holds/{hold['id']}/release", headers=client)
        assert again.json()["parts_changed"] == 0  # a retried release changes nothing
        # both endpoints are this receiver: every message reached each of them exactly once
        assert log.duplicates == len(log.snapshot())


async def test_order_hold_reaches_a_part_through_context_pushed_later(
    mes_settings: Settings, mint: Any
) -> None:
    client = bearer(mint(f"mes_client@{PLANT}", subject="mes-ctx", kind="service"))
    r = in_batch("st-order", "B-order-1")
    order = f"PO-{r.frame_id[:6]}"
    async with mes_with_api(mes_settings, fast(mes_settings.mes_endpoint), dispatch=False) as (svc, http):
        assert await svc.app.enqueue(r)
        hold = await http.post(
            f"/api/plants/{PLANT}/holds",
            json={"kind": "order", "value": order, "reason": "recall"},
            headers=client,
        )
        assert hold.status_code == 201 and hold.json()["parts_changed"] == 0  # serial not yet in the order
        ctx = await http.put(
            f"/api/plants/{PLANT}/parts/{r.capture.part_id}",
            json={"order": order, "product": "tile-40", "customer_requirement": "AQL 0.65"},
            headers=client,
        )
        assert ctx.status_code == 200 and ctx.json()["held"] == 1, ctx.text
        row = await svc.app.status(r.frame_id)
        # never sent yet: changed in place, under the frame's own key
        assert row.disposition == common_pb2.DISPOSITION_HOLD and row.key == r.frame_id
        assert row.payload["disposition"] == "hold" and row.payload["held_disposition"] == "reject"
        got = await http.get(f"/api/plants/{PLANT}/parts/{r.capture.part_id}", headers=client)
        assert got.json()["order"] == order and got.json()["updated_by"] == "mes-ctx"
        nxt = in_batch("st-order", "B-order-2")
        nxt.capture.part_id = r.capture.part_id  # the same serial seen at another station
        assert await svc.app.enqueue(nxt)
        later = await svc.app.status(nxt.frame_id)
        assert later.disposition == common_pb2.DISPOSITION_HOLD and later.payload["order"] == order
        assert later.payload["product"] == "tile-40"


async def test_inbound_api_is_scoped_to_the_plant_and_roles(mes_settings: Settings, mint: Any) -> None:
    callers = {
        "client": (mint(f"mes_client@{PLANT}", subject="c1", kind="service"), 201),
        "qa": (mint(f"qa_owner@{PLANT}/*", subject="q1"), 201),
        "elsewhere": (mint("mes_client@other-plant", subject="c2", kind="service"), 403),
        "labeler": (mint(f"labeler@{PLANT}/*", subject="l1"), 403),
        "operator": (mint(f"line_operator@{PLANT}/*", subject="o1"), 403),  # reads, may not hold
    }
    body = {"kind": "batch", "value": "B-perm", "reason": "test"}
    async with mes_with_api(mes_settings, fast(mes_settings.mes_endpoint), dispatch=False) as (_, http):
        url = f"/api/plants/{PLANT}/holds"
        assert (await http.post(url, json=body)).status_code == 401
        for name, (token, expected) in callers.items():
            assert (await http.post(url, json=body, headers=bearer(token))).status_code == expected, name
        operator = bearer(callers["operator"][0])
        assert (await http.get(f"/api/plants/{PLANT}/results", headers=operator)).status_code == 200
        assert (await http.put(f"/api/plants/{PLANT}/parts/S1", json={}, headers=operator)).status_code == 403
        anywhere = bearer(mint("mes_client@*", subject="c3", kind="service"))
        assert (await http.get("/api/plants/other-plant/results", headers=anywhere)).status_code == 404


async def test_each_client_is_rate_limited_on_its_own(mes_settings: Settings, mint: Any) -> None:
    a = bearer(mint(f"mes_client@{PLANT}", subject="rl-a", kind="service"))
    b = bearer(mint(f"mes_client@{PLANT}", subject="rl-b", kind="service"))
    limit = RateLimit(rate_per_s=0.5, burst=3)
    async with mes_with_api(
        mes_settings, fast(mes_settings.mes_endpoint), dispatch=False, rate_limit=limit
    ) as (_, http):
        url = f"/api/plants/{PLANT}/holds"
        codes = [(await http.get(url, headers=a)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = await http.get(url, headers=a)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert (await http.get(url, headers=b)).status_code == 200  # another client is not starved


async def test_hold_requests_that_cannot_be_served_are_refused_whole(
    mes_settings: Settings, mint: Any
) -> None:
    client = bearer(mint(f"mes_client@{PLANT}", subject="c-bad", kind="service"))
    async with mes_with_api(mes_settings, fast(mes_settings.mes_endpoint), dispatch=False) as (_, http):
        url = f"/api/plants/{PLANT}/holds"
        for body in (
            {"kind": "batch", "reason": "no value"},
            {
                "kind": "time_range",
                "reason": "x",
                "from_ts": "2026-01-02T00:00:00Z",
                "until_ts": "2026-01-01T00:00:00Z",
            },
            {
                "kind": "time_range",
                "reason": "x",
                "from_ts": "0001-01-01T00:00:00Z",
                "until_ts": "2026-01-01T00:00:00Z",
            },
            {"kind": "lot", "value": "L1", "reason": "x"},
            {"kind": "batch", "value": "B\x00", "reason": "x"},
        ):
            assert (await http.post(url, json=body, headers=client)).status_code == 422, body
        assert (await http.post(f"{url}/999999999/release", headers=client)).status_code == 404
        assert (await http.get(f"{url}/{2**63}", headers=client)).status_code == 422
        active = (await http.get(url, headers=client)).json()["holds"]
        assert not [h for h in active if h["created_by"] == "c-bad"]  # nothing half-created


async def test_an_endpoint_that_is_down_does_not_hold_up_another(mes_settings: Settings, mint: Any) -> None:
    """Each endpoint has its own delivery of every message and its own per-station order: the
    live one gets everything at once, in order; the down one catches up when it comes back."""
    up_port, down_port = free_port(), free_port()
    up_log, down_log = DispositionLog(), DispositionLog()
    endpoints = [
        WebhookEndpoint(name="up", url=f"http://127.0.0.1:{up_port}/dispositions", timeout_s=1.0),
        WebhookEndpoint(name="down", url=f"http://127.0.0.1:{down_port}/dispositions", timeout_s=1.0),
    ]
    client = bearer(mint(f"mes_client@{PLANT}", subject="mes-two", kind="service"))
    results = [in_batch(f"st-two-{i % 2}", "B-two") for i in range(10)]
    config = fast(endpoints[0].url)
    async with (
        mes_with_api(mes_settings, config, endpoints=endpoints) as (svc, http),
        receiver(up_port, up_log),
    ):
        for r in results:
            assert await svc.app.enqueue(r)

        async def up_has_all() -> bool:
            return {r.frame_id for r in results} <= set(up_log.snapshot())

        await eventually(up_has_all, timeout_s=10)
        order = [k for k in up_log.snapshot() if k in {r.frame_id for r in results}]
        for station in ("st-two-0", "st-two-1"):
            sent = [r.frame_id for r in results if r.capture.station.station == station]
            assert [k for k in order if k in sent] == sent  # per-station order at this endpoint
        row = await svc.app.status(results[0].frame_id)
        assert row.state == "pending" and "down:" in row.last_error  # one endpoint still owes it
        status = (
            await http.get(f"/api/plants/{PLANT}/deliveries/{results[0].frame_id}", headers=client)
        ).json()
        states = {e["endpoint"]: e["state"] for e in status["endpoints"]}
        assert states == {"up": "delivered", "down": "pending"}
        async with receiver(down_port, down_log):

            async def all_delivered() -> bool:
                return {(await svc.app.status(r.frame_id)).state for r in results} == {"delivered"}

            await eventually(all_delivered, timeout_s=20)
        assert {r.frame_id for r in results} <= set(down_log.snapshot())
        assert up_log.duplicates == 0
