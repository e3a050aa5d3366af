"""Outbound HTTP delivery of dispositions: the MES/ERP webhook behind the app's `Deliverer`."""

from __future__ import annotations

from typing import Any

import httpx

from linesight.mes.app.dispatch import Attempt

IDEMPOTENCY_HEADER = "Idempotency-Key"
TRACEPARENT_HEADER = "traceparent"


class WebhookDeliverer:
    """POSTs each disposition as JSON with `Idempotency-Key: <frame id>` on one pooled client."""

    def __init__(self, endpoint: str, *, timeout_s: float) -> None:
        self.endpoint = endpoint
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def deliver(self, key: str, payload: dict[str, Any]) -> Attempt:
        """POST one disposition and classify the answer (never raises)."""
        headers = {IDEMPOTENCY_HEADER: key}
        trace = payload.get("trace") or {}
        if trace.get("traceparent"):
            headers[TRACEPARENT_HEADER] = trace["traceparent"]
        try:
            resp = await self._client.post(self.endpoint, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            return Attempt(key, None, f"{type(exc).__name__}: {exc}"[:500], "retry")
        code = resp.status_code
        if 200 <= code < 300 or code == 409:  # 409: MES already holds this key
            return Attempt(key, code, "", "delivered")
        error = f"HTTP {code}: {resp.text[:300]}"
        if code in (408, 425, 429) or code >= 500:
            return Attempt(key, code, error, "retry")
        return Attempt(key, code, error, "dead")  # MES rejected the payload: retrying cannot help

    async def close(self) -> None:
        await self._client.aclose()
