"""The thick clients against a real in-process grpc.aio server with a scripted fake servicer.

One fake serves every API in proto/linesight/v1: it records each call and answers from a script
(a status code to fail with, a delay, or the default response), so the tests see what goes over
the wire: which RPC, how often (retries), what deadline, and which error the caller gets.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from linesight.common.backoff import Backoff
from linesight.common.clients import (
    CaptureClient,
    InferenceClient,
    LabelingClient,
    MesClient,
    TaxonomyClient,
    TrainingClient,
)
from linesight.common.embedded.process import free_port
from linesight.common.grpcutil import (
    Forbidden,
    InvalidArgument,
    NotFound,
    ServiceClient,
    ServiceError,
    ServiceUnavailable,
    Unauthenticated,
    start_grpc_server,
)
from linesight.common.pb import (
    capture_pb2,
    common_pb2,
    events_pb2,
    inference_pb2,
    labeling_pb2,
    mes_pb2,
    taxonomy_pb2,
    training_pb2,
)

PROTOS = (capture_pb2, inference_pb2, labeling_pb2, mes_pb2, taxonomy_pb2, training_pb2)


@dataclass
class Script:
    """What the fake does on the next calls of one RPC: fail `fail_times` with `code`, sleep `delay_s`."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    fail_times: int = 0
    delay_s: float = 0.0


@dataclass
class Fake:
    calls: list[tuple[str, Message]] = field(default_factory=list)
    scripts: dict[str, Script] = field(default_factory=dict)

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)


def _handler(
    fake: Fake, method: str, request_cls: type[Message], response_cls: type[Message], streaming: bool = False
) -> Any:
    async def behave(request: Any, context: grpc.aio.ServicerContext) -> Message:
        if streaming:  # a client stream (an upload): recorded as the list of its messages
            request = [m async for m in request]
        fake.calls.append((method, request))
        script = fake.scripts.get(method, Script())
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        if script.fail_times > 0:
            script.fail_times -= 1
            await context.abort(script.code, f"scripted {script.code.name}")
        return response_cls()

    make = grpc.stream_unary_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
    return make(
        behave,
        request_deserializer=request_cls.FromString,
        response_serializer=response_cls.SerializeToString,
    )


def _register_all(fake: Fake) -> Callable[[grpc.aio.Server], None]:
    def register(server: grpc.aio.Server) -> None:
        for module in PROTOS:
            for service in module.DESCRIPTOR.services_by_name.values():
                handlers = {
                    m.name: _handler(
                        fake,
                        m.name,
                        GetMessageClass(m.input_type),
                        GetMessageClass(m.output_type),
                        m.client_streaming,
                    )
                    for m in service.methods
                }
                server.add_generic_rpc_handlers(
                    (grpc.method_handlers_generic_handler(service.full_name, handlers),)
                )

    return register


@dataclass
class Peer:
    fake: Fake
    target: str


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    fake = Fake()
    port = free_port()
    server = await start_grpc_server(port, _register_all(fake))
    try:
        yield Peer(fake, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


def _fast(client: ServiceClient[Any]) -> None:
    """Short retry delays so a retry test takes milliseconds."""
    client.backoff = Backoff(base_s=0.01, cap_s=0.02)


# Every RPC of every API: (client class, method call, RPC name, mutation?, request check).
Call = Callable[[Any], Awaitable[Any]]
RPCS: list[tuple[Callable[[str], ServiceClient[Any]], Call, str, bool, Callable[[Any], bool]]] = [
    (
        CaptureClient,
        lambda c: c.trigger("part-7", batch="b1"),
        "Trigger",
        True,
        lambda r: r.part_id == "part-7",
    ),
    (CaptureClient, lambda c: c.status(), "GetStatus", False, lambda r: True),
    (
        CaptureClient,
        lambda c: c.profile(common_pb2.StationRef(station="st9")),
        "GetStationProfile",
        False,
        lambda r: r.station.station == "st9",
    ),
    (
        InferenceClient,
        lambda c: c.inspect(events_pb2.FrameCaptured(frame_id="f1"), b"png"),
        "Inspect",
        True,
        lambda r: r.frame.frame_id == "f1" and r.image == b"png",
    ),
    (InferenceClient, lambda c: c.model_info(), "GetModelInfo", False, lambda r: True),
    (
        InferenceClient,
        lambda c: c.recalibrate(common_pb2.StationRef(station="st1"), [common_pb2.ObjectRef(key="k")]),
        "Recalibrate",
        True,
        lambda r: r.station.station == "st1" and r.golden_frames[0].key == "k",
    ),
    (
        LabelingClient,
        lambda c: c.review_queue("review", 5),
        "ListReviewQueue",
        False,
        lambda r: r.queue == "review" and r.limit == 5,
    ),
    (
        LabelingClient,
        lambda c: c.submit_label(
            "f1", labeling_pb2.LabelBody(label="scratch", severity=common_pb2.SEVERITY_MINOR)
        ),
        "SubmitLabel",
        True,
        lambda r: (
            (r.frame_id, r.label, r.severity, r.user) == ("f1", "scratch", common_pb2.SEVERITY_MINOR, "")
        ),
    ),
    (
        LabelingClient,
        lambda c: c.review("f1", accept=False, reason="r", correction=labeling_pb2.LabelBody(label="dent")),
        "ReviewLabel",
        True,
        lambda r: (r.frame_id, r.accept, r.correction.label) == ("f1", False, "dent"),
    ),
    (LabelingClient, lambda c: c.claim(queue="audit"), "ClaimItem", True, lambda r: r.queue == "audit"),
    (LabelingClient, lambda c: c.agreement("s1"), "GetAgreement", False, lambda r: r.sample_id == "s1"),
    (LabelingClient, lambda c: c.release("f1"), "ReleaseItem", False, lambda r: r.frame_id == "f1"),
    (
        LabelingClient,
        lambda c: c.decide(
            "f1", labeling_pb2.LabelBody(label="dent"), reason="why", taxonomy_draft_needed=True
        ),
        "DecideDispute",
        True,
        lambda r: (r.decision.label, r.reason, r.taxonomy_draft_needed) == ("dent", "why", True),
    ),
    (
        LabelingClient,
        lambda c: c.override("f1", labeling_pb2.LabelBody(label="good"), reason="looked fine"),
        "RecordOverride",
        True,
        lambda r: (r.label.label, r.reason) == ("good", "looked fine"),
    ),
    (LabelingClient, lambda c: c.queue_stats(), "GetQueueStats", False, lambda r: True),
    (
        LabelingClient,
        lambda c: c.audit(after_seq=7, action="label.review"),
        "ListAudit",
        False,
        lambda r: (r.after_seq, r.action) == (7, "label.review"),
    ),
    (LabelingClient, lambda c: c.verify_audit(), "VerifyAudit", False, lambda r: True),
    (LabelingClient, lambda c: c.ledger_stats(), "GetLedgerStats", False, lambda r: True),
    (MesClient, lambda c: c.dispatch_status("f1"), "GetDispatchStatus", False, lambda r: r.frame_id == "f1"),
    (MesClient, lambda c: c.redeliver("f1"), "Redeliver", True, lambda r: r.frame_id == "f1"),
    (
        TaxonomyClient,
        lambda c: c.get_taxonomy("tile", "v2"),
        "GetTaxonomy",
        False,
        lambda r: (r.product, r.version) == ("tile", "v2"),
    ),
    (
        TaxonomyClient,
        lambda c: c.publish_taxonomy("tile", "classes: []", migration_notes="n"),
        "PublishTaxonomy",
        True,
        lambda r: (r.yaml, r.migration_notes, r.approved_by) == ("classes: []", "n", ""),
    ),
    (TaxonomyClient, lambda c: c.list_versions("tile"), "ListVersions", False, lambda r: r.product == "tile"),
    (TaxonomyClient, lambda c: c.create_draft("tile", "y"), "CreateDraft", True, lambda r: r.yaml == "y"),
    (
        TaxonomyClient,
        lambda c: c.update_draft("tile", "2", "y"),
        "UpdateDraft",
        False,  # a replace: repeating it changes nothing
        lambda r: (r.version, r.yaml) == ("2", "y"),
    ),
    (TaxonomyClient, lambda c: c.get_draft("tile", "2"), "GetDraft", False, lambda r: r.version == "2"),
    (TaxonomyClient, lambda c: c.list_drafts("tile"), "ListDrafts", False, lambda r: r.product == "tile"),
    (TaxonomyClient, lambda c: c.submit_draft("tile", "2"), "SubmitDraft", True, lambda r: r.version == "2"),
    (
        TaxonomyClient,
        lambda c: c.approve_draft("tile", "2"),
        "ApproveDraft",
        True,
        lambda r: r.version == "2",
    ),
    (
        TaxonomyClient,
        lambda c: c.reject_draft("tile", "2", comment="why"),
        "RejectDraft",
        True,
        lambda r: r.comment == "why",
    ),
    (
        TaxonomyClient,
        lambda c: c.diff("tile", "1", "2"),
        "DiffVersions",
        False,
        lambda r: (r.from_version, r.to_version) == ("1", "2"),
    ),
    (
        TrainingClient,
        lambda c: c.start_training("tile", "/data/set"),
        "StartTraining",
        True,
        lambda r: r.dataset_version == "/data/set",
    ),
    (TrainingClient, lambda c: c.get_job("j1"), "GetTrainingJob", False, lambda r: r.job_id == "j1"),
    (TrainingClient, lambda c: c.cancel_job("j1"), "CancelTrainingJob", False, lambda r: r.job_id == "j1"),
    (TrainingClient, lambda c: c.list_models("tile"), "ListModels", False, lambda r: r.product == "tile"),
    (
        TrainingClient,
        lambda c: c.promote_model("m1", approved_by="qa", reason="ok"),
        "PromoteModel",
        True,
        lambda r: (r.model_version, r.approved_by, r.reason) == ("m1", "qa", "ok"),
    ),
    # Dataset versions are identified by content: a retried import or create returns the same one.
    (
        TrainingClient,
        lambda c: c.import_dataset("tile", "tile-set", reason="r"),
        "ImportDataset",
        False,
        lambda r: (r.product, r.directory, r.reason) == ("tile", "tile-set", "r"),
    ),
    (
        TrainingClient,
        # No file of the list exists here, so the stream is the header alone.
        lambda c: c.upload_dataset("tile", Path("/nonexistent-folder"), ["manifest.csv"], reason="r"),
        "UploadDataset",
        True,
        lambda r: [(m.header.product, m.header.reason) for m in r] == [("tile", "r")],
    ),
    (
        TrainingClient,
        lambda c: c.create_dataset_version("tile", parent_version="v0"),
        "CreateDatasetVersion",
        False,
        lambda r: (r.product, r.parent_version) == ("tile", "v0"),
    ),
    (
        TrainingClient,
        lambda c: c.list_dataset_versions("tile"),
        "ListDatasetVersions",
        False,
        lambda r: r.product == "tile",
    ),
    (
        TrainingClient,
        lambda c: c.get_dataset_version("v1"),
        "GetDatasetVersion",
        False,
        lambda r: r.version == "v1",
    ),
    (
        TrainingClient,
        lambda c: c.diff_dataset_versions("v1", "v2"),
        "DiffDatasetVersions",
        False,
        lambda r: (r.base, r.other) == ("v1", "v2"),
    ),
    (
        TrainingClient,
        lambda c: c.dataset_report("v1", html=True),
        "GetDatasetReport",
        False,
        lambda r: (r.version, r.html) == ("v1", True),
    ),
    (
        TrainingClient,
        lambda c: c.waive_dataset_finding("v1", "metadata_leak", "accepted"),
        "WaiveDatasetFinding",
        True,
        lambda r: (r.version, r.kind, r.reason) == ("v1", "metadata_leak", "accepted"),
    ),
    # Registry stages, release gates, shadow comparison, rollback: decisions are never retried.
    (TrainingClient, lambda c: c.get_model("m1"), "GetModel", False, lambda r: r.model_version == "m1"),
    (
        TrainingClient,
        lambda c: c.set_model_stage("m1", "shadow", reason="trial"),
        "SetModelStage",
        True,
        lambda r: (r.model_version, r.stage, r.reason) == ("m1", "shadow", "trial"),
    ),
    (
        TrainingClient,
        lambda c: c.rollback_model(product="tile", reason="rejects"),
        "RollbackModel",
        True,
        lambda r: (r.product, r.model_version, r.reason) == ("tile", "", "rejects"),
    ),
    (
        TrainingClient,
        lambda c: c.set_release_gate("tile", "max_false_reject_rate: 0.02\n", reason="policy"),
        "SetReleaseGate",
        True,
        lambda r: (r.product, r.reason) == ("tile", "policy") and "0.02" in r.gate_yaml,
    ),
    (
        TrainingClient,
        lambda c: c.get_release_gate("tile", 2),
        "GetReleaseGate",
        False,
        lambda r: (r.product, r.version) == ("tile", 2),
    ),
    (
        TrainingClient,
        lambda c: c.gate_report("m1", html=True),
        "GetGateReport",
        False,
        lambda r: (r.model_version, r.html) == ("m1", True),
    ),
    (
        TrainingClient,
        lambda c: c.shadow_report(product="tile"),
        "GetShadowReport",
        False,
        lambda r: (r.model_version, r.product) == ("", "tile"),
    ),
]
IDS = [rpc for _, _, rpc, _, _ in RPCS]


def test_every_rpc_of_every_api_has_a_client_method() -> None:
    rpcs = {
        m.name for module in PROTOS for s in module.DESCRIPTOR.services_by_name.values() for m in s.methods
    }
    assert sorted(IDS) == sorted(rpcs)


@pytest.mark.parametrize(("cls", "call", "rpc", "mutation", "check"), RPCS, ids=IDS)
async def test_each_method_sends_its_rpc_and_retries_only_reads(
    peer: Peer,
    cls: Callable[[str], ServiceClient[Any]],
    call: Call,
    rpc: str,
    mutation: bool,
    check: Callable[[Any], bool],
) -> None:
    async with cls(peer.target) as client:
        _fast(client)
        await call(client)
        assert peer.fake.count(rpc) == 1
        assert check(peer.fake.calls[-1][1])

        peer.fake.scripts[rpc] = Script(grpc.StatusCode.UNAVAILABLE, fail_times=1)
        if mutation:
            with pytest.raises(ServiceUnavailable):
                await call(client)
            assert peer.fake.count(rpc) == 2, "a mutation must not be retried"
        else:
            await call(client)
            assert peer.fake.count(rpc) == 3, "a read is retried once after UNAVAILABLE"


async def test_read_gives_up_after_its_retries(peer: Peer) -> None:
    peer.fake.scripts["GetTrainingJob"] = Script(grpc.StatusCode.UNAVAILABLE, fail_times=10)
    async with TrainingClient(peer.target) as client:
        _fast(client)
        with pytest.raises(ServiceUnavailable, match="after 4 attempt"):
            await client.get_job("j1")
    assert peer.fake.count("GetTrainingJob") == 1 + client.retries


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, InvalidArgument),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ServiceUnavailable),
        (grpc.StatusCode.PERMISSION_DENIED, Forbidden),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.INTERNAL, ServiceError),
    ],
)
async def test_status_codes_become_domain_errors_without_retry(
    peer: Peer, code: grpc.StatusCode, error: type[Exception]
) -> None:
    peer.fake.scripts["GetDispatchStatus"] = Script(code, fail_times=5)
    async with MesClient(peer.target) as client:
        with pytest.raises(error, match=f"mes GetDispatchStatus at {peer.target}: {code.name}"):
            await client.dispatch_status("f1")
    assert peer.fake.count("GetDispatchStatus") == 1


async def test_each_attempt_has_its_own_deadline(peer: Peer) -> None:
    peer.fake.scripts["GetModelInfo"] = Script(delay_s=1.0)
    async with InferenceClient(peer.target, timeout_s=0.2) as client:
        _fast(client)
        client.retries = 1
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="DEADLINE_EXCEEDED"):
            await client.model_info()
        elapsed = time.monotonic() - t0
    assert peer.fake.count("GetModelInfo") == 2
    assert elapsed < 1.0, "the deadline cut both attempts short"


async def test_a_timed_out_mutation_is_not_repeated(peer: Peer) -> None:
    peer.fake.scripts["Trigger"] = Script(delay_s=1.0)
    async with CaptureClient(peer.target, timeout_s=0.2) as client:
        with pytest.raises(ServiceUnavailable, match="DEADLINE_EXCEEDED"):
            await client.trigger("p1")
    assert peer.fake.count("Trigger") == 1


async def test_unreachable_peer_is_service_unavailable() -> None:
    async with LabelingClient(f"127.0.0.1:{free_port()}", timeout_s=0.5) as client:
        _fast(client)
        with pytest.raises(ServiceUnavailable, match="UNAVAILABLE"):
            await client.ledger_stats()
        with pytest.raises(ServiceUnavailable, match="not reachable"):
            await client.wait_ready(0.2)


async def test_retry_delays_follow_the_shared_backoff_policy() -> None:
    client = TaxonomyClient("127.0.0.1:1")
    assert client.backoff == Backoff(base_s=0.1, cap_s=2.0, jitter=0.5)  # the numbers callers relied on
    mid = random.Random(0)
    mid.random = lambda: 0.5  # type: ignore[method-assign]  # jitter factor exactly 1
    assert [client.backoff.delay(n, mid) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    await client.close()
