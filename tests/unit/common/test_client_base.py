"""PeerClient: each thick client names its stub, service and default deadline once; an explicit
`timeout_s` wins, even a wrong one (it is refused, not silently replaced by the default)."""

from __future__ import annotations

import pytest

from linesight.common.clients import (
    CaptureClient,
    InferenceClient,
    LabelingClient,
    MesClient,
    TaxonomyClient,
    TrainingClient,
)
from linesight.common.clients.base import PeerClient
from linesight.common.embedded.process import free_port

CLIENTS: list[tuple[type[PeerClient[object]], str, float]] = [
    (CaptureClient, "capture", 10.0),
    (InferenceClient, "inference", 10.0),
    (LabelingClient, "labeling", 10.0),
    (MesClient, "mes", 10.0),
    (TaxonomyClient, "taxonomy", 10.0),
    (TrainingClient, "training", 30.0),  # training calls wait on dataset scans
]


@pytest.mark.parametrize(("client_class", "service", "timeout_s"), CLIENTS)
async def test_declared_service_stub_and_deadline(
    client_class: type[PeerClient[object]], service: str, timeout_s: float
) -> None:
    target = f"127.0.0.1:{free_port()}"
    async with client_class(target) as client:
        assert client.service == service
        assert client.timeout_s == timeout_s
        assert isinstance(client.stub, client_class.stub_class)
    async with client_class(target, timeout_s=1.5) as client:
        assert client.timeout_s == 1.5


async def test_a_nonpositive_deadline_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        MesClient("127.0.0.1:1", timeout_s=0)
