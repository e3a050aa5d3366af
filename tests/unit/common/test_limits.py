"""Text limits give a clear error naming the field; the body limit answers 413 before a handler
buffers an oversized upload, whether or not the client declared its length."""

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError

from linesight.common.limits import MAX_NAME, BodyLimit, Comment, Name, TextError, check_name, check_text


class Label(BaseModel):
    label: Name
    comment: Comment = ""


@pytest.mark.parametrize("bad", ["crack\x00", "a\nb", "x" * (MAX_NAME + 1), "\x7f"])
def test_name_refuses_control_and_length(bad):
    with pytest.raises(ValidationError) as err:
        Label(label=bad)
    assert err.value.errors()[0]["loc"] == ("label",)


def test_comment_keeps_lines_refuses_nul():
    assert Label(label="crack", comment="line 1\nline 2\t<script>").comment.endswith("<script>")
    with pytest.raises(ValidationError):
        Label(label="crack", comment="a\x00b")


def test_plain_checks_name_the_field():
    with pytest.raises(TextError, match=r"^reason: control"):
        check_name("x\x00", "reason")
    with pytest.raises(TextError, match=r"^note: at most 3"):
        check_text("abcd", "note", max_len=3)
    assert check_text("ok\n", "note") == "ok\n"


async def test_body_limit():
    app = FastAPI()

    @app.post("/echo")
    async def echo(label: Label) -> dict[str, str]:
        return {"label": label.label}

    limited = BodyLimit(app, max_bytes=1000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limited), base_url="http://t") as client:
        assert (await client.post("/echo", json={"label": "crack"})).json() == {"label": "crack"}
        big = await client.post("/echo", json={"label": "x" * 5000})
        assert big.status_code == 413

        async def chunks():
            for _ in range(10):
                yield b"x" * 500

        streamed = await client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
