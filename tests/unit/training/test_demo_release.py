"""The demo's release step: a candidate the gate held back is promoted by the demo acting as QA
owner, with a reason naming the failed checks; a production model needs nothing."""

from __future__ import annotations

from typing import Any

import pytest

from linesight.cli import cmd_demo
from linesight.common.pb import training_pb2
from linesight.common.settings import Settings


class FakeStub:
    def __init__(self, stage_after: str = "production") -> None:
        self.requests: list[training_pb2.PromoteModelRequest] = []
        self.stage_after = stage_after

    async def PromoteModel(self, request: training_pb2.PromoteModelRequest, **_kw: Any) -> Any:  # noqa: N802
        self.requests.append(request)
        return training_pb2.ModelEntry(
            model_version=request.model_version, stage=self.stage_after, stage_changed_by=request.approved_by
        )


async def test_candidate_is_promoted_by_the_acting_qa_owner_naming_the_failed_checks() -> None:
    said: list[str] = []
    stub = FakeStub()
    job = training_pb2.TrainingJob(
        job_id="j", state="succeeded", model_version="v1", stage="candidate",
        gate_failures=["defect_recall 0.6 < 0.8", "false_reject_rate 0.2 > 0.1"],
    )  # fmt: skip
    await cmd_demo._release(stub, Settings(product="tile"), job, said.append)  # type: ignore[arg-type]
    [req] = stub.requests
    assert (req.product, req.model_version, req.approved_by) == ("tile", "v1", "demo (acting QA owner)")
    assert "defect_recall 0.6 < 0.8" in req.reason and "false_reject_rate 0.2 > 0.1" in req.reason
    text = "\n".join(said)
    assert "CANDIDATE" in text and "defect_recall 0.6 < 0.8" in text and "PROMOTING v1" in text
    assert "QA owner" in text and "is now production" in text


async def test_production_model_needs_no_promotion_and_a_failed_promotion_is_an_error() -> None:
    stub = FakeStub()
    job = training_pb2.TrainingJob(job_id="j", state="succeeded", model_version="v2", stage="production")
    await cmd_demo._release(stub, Settings(), job, lambda _m: None)  # type: ignore[arg-type]
    assert stub.requests == []
    job.stage = "candidate"
    with pytest.raises(cmd_demo.DemoError, match="not production"):
        await cmd_demo._release(FakeStub("candidate"), Settings(), job, lambda _m: None)  # type: ignore[arg-type]
