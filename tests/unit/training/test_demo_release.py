"""The demo's release step: training only produces candidates, so the demo, acting as the plant's
QA owner, signs the model off explicitly. A model that fails the gate is never overridden: the
demo's QA owner first sets a pilot gate (a recorded gate version whose reason names the failed
checks), says so in one line, then signs off. The approver is the demo's token (the service
records the caller), not a name it claims."""

from __future__ import annotations

import pytest

from linesight.cli import cmd_demo
from linesight.common.identity.model import Role
from linesight.common.pb import training_pb2
from linesight.common.settings import Settings


class FakeTrainingClient:
    """Stands in for TrainingClient; records what the demo asked for, in order."""

    def __init__(self, stage_after: str = "production") -> None:
        self.calls: list[tuple[str, object]] = []
        self.stage_after = stage_after

    async def set_release_gate(
        self, product: str, gate_yaml: str, *, reason: str
    ) -> training_pb2.ReleaseGateVersion:
        self.calls.append(("gate", training_pb2.SetReleaseGateRequest(product=product, gate_yaml=gate_yaml,
                                                                       reason=reason)))  # fmt: skip
        return training_pb2.ReleaseGateVersion(product=product, version=1, gate_yaml=gate_yaml)

    async def promote_model(
        self, model_version: str, *, approved_by: str = "", reason: str = "", product: str = ""
    ) -> training_pb2.ModelEntry:
        request = training_pb2.PromoteModelRequest(
            product=product, model_version=model_version, approved_by=approved_by, reason=reason
        )
        self.calls.append(("promote", request))
        return training_pb2.ModelEntry(
            model_version=model_version, stage=self.stage_after, stage_changed_by=cmd_demo.DEMO_SUBJECT
        )


async def test_an_eligible_candidate_is_signed_off_explicitly_by_the_acting_qa_owner() -> None:
    said: list[str] = []
    client = FakeTrainingClient()
    job = training_pb2.TrainingJob(job_id="j", state="succeeded", model_version="v1", stage="candidate")
    await cmd_demo._release(client, Settings(product="tile"), job, said.append)  # type: ignore[arg-type]
    [(kind, req)] = client.calls
    assert kind == "promote" and isinstance(req, training_pb2.PromoteModelRequest)
    assert (req.product, req.model_version, req.approved_by) == ("tile", "v1", "")
    assert said == ["release gate passed: v1 eligible, signed off by the acting QA owner"]


async def test_a_failed_gate_gets_a_stated_pilot_gate_before_the_sign_off() -> None:
    said: list[str] = []
    client = FakeTrainingClient()
    job = training_pb2.TrainingJob(
        job_id="j", state="succeeded", model_version="v1", stage="candidate",
        gate_failures=["defect_recall 0.6 < 0.8", "false_reject_rate 0.2 > 0.1"],
    )  # fmt: skip
    await cmd_demo._release(client, Settings(product="tile"), job, said.append)  # type: ignore[arg-type]
    assert [kind for kind, _ in client.calls] == ["gate", "promote"]
    gate = client.calls[0][1]
    assert isinstance(gate, training_pb2.SetReleaseGateRequest) and gate.product == "tile"
    assert "defect_recall 0.6 < 0.8" in gate.reason and "false_reject_rate 0.2 > 0.1" in gate.reason
    [line] = said  # one short line, not a paragraph
    assert "v1" in line and "defect_recall 0.6 < 0.8" in line and "pilot gate" in line
    assert "acting QA owner" in line and len(line) < 160


def test_the_demo_acts_as_qa_owner_of_its_plant_only() -> None:
    principal = cmd_demo.demo_principal(Settings(plant="p7", product="tile"))
    assert principal.subject == cmd_demo.DEMO_SUBJECT and principal.kind == "service"
    assert principal.has(Role.QA_OWNER, "p7", "tile") and principal.has(Role.SERVICE, "p7")
    assert not principal.has(Role.QA_OWNER, "another-plant", "tile")


async def test_production_model_needs_no_sign_off_and_a_failed_promotion_is_an_error() -> None:
    client = FakeTrainingClient()
    job = training_pb2.TrainingJob(job_id="j", state="succeeded", model_version="v2", stage="production")
    said: list[str] = []
    await cmd_demo._release(client, Settings(), job, said.append)  # type: ignore[arg-type]
    assert client.calls == [] and said == ["v2 is already the production model"]
    job.stage = "candidate"
    with pytest.raises(cmd_demo.DemoError, match="not production"):
        await cmd_demo._release(FakeTrainingClient("candidate"), Settings(), job, lambda _m: None)  # type: ignore[arg-type]
