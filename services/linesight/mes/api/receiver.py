"""A tiny stand-in for the plant's MES/ERP endpoint (the demo's "MES"): records POSTed
dispositions, de-duplicates by `Idempotency-Key`, and reports what it holds.

Run it with `python -m linesight.mes.api.receiver --port 17200` or in-process with
`create_receiver_app()` under uvicorn. State is in memory, plus an optional JSON-lines file so a
restarted receiver still knows what it has (and keeps de-duplicating).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from linesight.mes.app.adapters import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


class DispositionLog:
    """Dispositions by idempotency key; thread-safe so tests may read it from another thread."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        self.path = path
        if path and path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    item = json.loads(line)
                    self._items[item["key"]] = item["body"]

    def add(self, key: str, body: dict[str, Any]) -> bool:
        """True when new; False for a repeat of a key already held (counted as a duplicate)."""
        with self._lock:
            if key in self._items:
                self.duplicates += 1
                return False
            self._items[key] = body
            if self.path:
                with self.path.open("a") as f:
                    f.write(json.dumps({"key": key, "body": body}) + "\n")
            return True

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._items)


def create_receiver_app(
    log: DispositionLog | None = None, *, secret: str = "", replay_window_s: float = 300.0
) -> FastAPI:
    """With `secret`, a POST whose HMAC signature is missing, wrong or outside the replay window is
    refused with 401 and not recorded."""
    app = FastAPI(title="LineSight demo MES receiver")
    store = log or DispositionLog()
    app.state.dispositions = store

    @app.post("/dispositions")
    async def receive(request: Request) -> dict[str, Any]:
        key = request.headers.get("Idempotency-Key", "").strip()
        if not key:
            raise HTTPException(400, "Idempotency-Key header is required")
        if secret:
            why = verify(
                secret,
                request.headers.get(TIMESTAMP_HEADER, ""),
                await request.body(),
                request.headers.get(SIGNATURE_HEADER, ""),
                now=time.time(),
                window_s=replay_window_s,
            )
            if why:
                raise HTTPException(401, f"signature refused: {why}")
        try:
            body = await request.json()
        except ValueError as exc:
            raise HTTPException(400, f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise HTTPException(400, "body must be a JSON object")
        new = store.add(key, body)
        return {"accepted": True, "duplicate": not new}

    @app.get("/dispositions")
    async def summary(items: bool = False) -> dict[str, Any]:
        snap = store.snapshot()
        by_disposition: dict[str, int] = {}
        for body in snap.values():
            d = str(body.get("disposition", ""))
            by_disposition[d] = by_disposition.get(d, 0) + 1
        out: dict[str, Any] = {
            "count": len(snap),
            "duplicates": store.duplicates,
            "by_disposition": by_disposition,
        }
        if items:
            out["items"] = snap
        return out

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="demo MES/ERP receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=17200)
    parser.add_argument(
        "--log-file", type=Path, default=None, help="JSON-lines file of received dispositions"
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        create_receiver_app(DispositionLog(args.log_file)),
        host=args.host,
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
