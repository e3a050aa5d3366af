"""The inference service as `python -m linesight.inference` wires it, in-process on the session's
NATS and S3: `setup` returns the app, and GetModelInfo maps what the app reports to the proto."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc.aio
import numpy as np
import pytest

from linesight.common.identity.grpc import bearer_metadata
from linesight.common.pb import inference_pb2, inference_pb2_grpc
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.inference.app import InferenceApp
from linesight.inference.service import setup
from tests.unit.inference.standin import LOADER, make_export

pytestmark = pytest.mark.integration


async def test_setup_serves_the_app_over_grpc(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mint: Any
) -> None:
    for key in [k for k in os.environ if k.startswith("LINESIGHT_INFERENCE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LINESIGHT_INFERENCE_MODEL_LOADER", LOADER)
    monkeypatch.setenv("LINESIGHT_INFERENCE_WORK_DIR", str(tmp_path / "work"))
    # a plant of its own: the ModelPublished replay of other tests is not this service's
    settings = stack_settings.model_copy(update={"plant": "inference-svc"})
    async with service_running("inference", setup, settings=settings) as svc:
        assert isinstance(svc.app, InferenceApp)
        reference = np.linspace(0.01, 0.04, 32)  # with it the export carries its thresholds
        export = make_export(tmp_path / "m1", "v1", product=settings.product, reference_good=reference)
        await svc.app.install_directory(export)
        async with grpc.aio.insecure_channel(settings.grpc_target("inference")) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await stub.GetModelInfo(inference_pb2.GetModelInfoRequest(), timeout=10)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            info = await stub.GetModelInfo(
                inference_pb2.GetModelInfoRequest(),
                timeout=10,
                metadata=bearer_metadata(mint("line_operator@*/*", subject="olga")),
            )
        reported = svc.app.model_info()
    assert info.model_version == "v1" and info.backend == "in_process" and info.taxonomy_version == "tx-1"
    assert list(info.classes) == reported.classes == ["scratch"]  # "good" is no defect class
    assert dict(info.thresholds) == pytest.approx(reported.thresholds)
    assert info.thresholds["anomaly"] == pytest.approx(1.0) and info.thresholds["defect"] == pytest.approx(
        0.5
    )
    assert not info.fallback and info.last_load_error == "" and info.pending_version == ""
