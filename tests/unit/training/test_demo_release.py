"""The demo's release step: a candidate the gate held back is promoted by the demo acting as QA
owner, with a reason naming the failed checks, said in one line; a production model needs nothing.
The approver is the demo's token (the service records the caller), not a name it claims."""

from __future__ import annotations

import pytest

from linesight.cli import cmd_demo
from linesight.common.identity.model import Role
from linesight.common.pb import training_pb2
from linesight.common.settings import Settings


class FakeTrainingClient:
    """Stands in for TrainingClient.promote_model; records what the demo asked for."""

    def __init__(self, stage_after: str = "production") -> None:
        self.requests: list[training_pb2.PromoteModelRequest] = []
        self.stage_after = stage_after

    async def promote_model(
        self, model_version: str, *, approved_by: str = "", reason: str = "", product: str = ""
    ) -> training_pb2.ModelEntry:
        request = training_pb2.PromoteModelRequest(
            product=product, model_version=model_version, approved_by=approved_by, reason=reason
        )
        self.requests.append(request)
        return training_pb2.ModelEntry(
            model_version=model_version, stage=self.stage_after, stage_changed_by=cmd_demo.DEMO_SUBJECT
        )


async def test_candidate_is_promoted_by_the_acting_qa_owner_naming_the_failed_checks() -> None:
    said: list[str] = []
    client = FakeTrainingClient()
    job = training_pb2.TrainingJob(
        job_id="j", state="succeeded", model_version="v1", stage="candidate",
        gate_failures=["defect_recall 0.6 < 0.8", "false_reject_rate 0.2 > 0.1"],
    )  # fmt: skip
    await cmd_demo._release(client, Settings(product="tile"), job, said.append)  # type: ignore[arg-type]
    [req] = client.requests
    assert (req.product, req.model_version, req.approved_by) == ("tile", "v1", "")
    assert "defect_recall 0.6 < 0.8" in req.reason and "false_reject_rate 0.2 > 0.1" in req.reason
    [line] = said  # one short line, not a paragraph
    assert "v1" in line and "defect_recall 0.6 < 0.8" in line and "false_reject_rate 0.2 > 0.1" in line
    assert "acting QA owner" in line and "promoted" in line
    assert len(line) < 160


def test_the_demo_acts_as_qa_owner_of_its_plant_only() -> None:
    principal = cmd_demo.demo_principal(Settings(plant="p7", product="tile"))
    assert principal.subject == cmd_demo.DEMO_SUBJECT and principal.kind == "service"
    assert principal.has(Role.QA_OWNER, "p7", "tile") and principal.has(Role.SERVICE, "p7")
    assert not principal.has(Role.QA_OWNER, "another-plant", "tile")


async def test_production_model_needs_no_promotion_and_a_failed_promotion_is_an_error() -> None:
    client = FakeTrainingClient()
    job = training_pb2.TrainingJob(job_id="j", state="succeeded", model_version="v2", stage="production")
    said: list[str] = []
    await cmd_demo._release(client, Settings(), job, said.append)  # type: ignore[arg-type]
    assert client.requests == [] and said == ["release gate passed: v2 is the production model"]
    job.stage = "candidate"
    with pytest.raises(cmd_demo.DemoError, match="not production"):
        await cmd_demo._release(FakeTrainingClient("candidate"), Settings(), job, lambda _m: None)  # type: ignore[arg-type]
