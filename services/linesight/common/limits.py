"""What callers may send: bounded text without NUL or control characters, and bounded bodies.

A NUL byte in a label is not data anyone meant to store: PostgreSQL refuses it (an HTTP 500
otherwise) and a 5 MB "comment" makes every audit page megabytes long and no longer fits a bus
message. Request models use these types so a bad value is a 422 naming the field, before anything
is written.

>>> from pydantic import BaseModel
>>> class Label(BaseModel):
...     label: Name
...     comment: Comment = ""
>>> Label(label="crack\\x00").label  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
pydantic_core._pydantic_core.ValidationError: ...control characters...
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_NAME = 200  # class names, users, stations, part ids, reasons
MAX_TEXT = 4_000  # comments, definitions, notes: a paragraph, not a document
MAX_BODY_BYTES = 1 * 1024 * 1024  # JSON bodies; images travel through S3, not request bodies

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, LF and CR are text
_CONTROL_SINGLE_LINE = re.compile(r"[\x00-\x1f\x7f]")


class TextError(ValueError):
    """A text field holds characters or a length no caller has a reason to send."""


def check_name(value: str, field: str = "value", *, max_len: int = MAX_NAME) -> str:
    """A one-line identifier or short label; raises TextError naming `field`."""
    if _CONTROL_SINGLE_LINE.search(value):
        raise TextError(f"{field}: control characters (NUL, newline, ...) are not allowed")
    if len(value) > max_len:
        raise TextError(f"{field}: at most {max_len} characters (got {len(value)})")
    return value


def check_text(value: str, field: str = "value", *, max_len: int = MAX_TEXT) -> str:
    """Free text (newlines and tabs allowed); raises TextError naming `field`."""
    if _CONTROL.search(value):
        raise TextError(f"{field}: control characters (NUL, ...) are not allowed")
    if len(value) > max_len:
        raise TextError(f"{field}: at most {max_len} characters (got {len(value)})")
    return value


def _name(value: str) -> str:
    if _CONTROL_SINGLE_LINE.search(value):
        raise ValueError("control characters (NUL, newline, ...) are not allowed")
    return value


def _text(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("control characters (NUL, ...) are not allowed")
    return value


Name = Annotated[str, Field(max_length=MAX_NAME), AfterValidator(_name)]
Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_text)]
Comment = Text


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, counted as it streams in (a client
    cannot make a service buffer an arbitrary upload by lying in Content-Length). Bodies under the
    limit are read here and replayed to the app: JSON APIs read them whole anyway."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away; let the app see it
                replay: list[Message] = [message]
                break
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await _too_large(send, self.max_bytes)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replayed() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replayed, send)


async def _too_large(send: Send, max_bytes: int) -> None:
    body = f'{{"detail":"request body over {max_bytes} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
