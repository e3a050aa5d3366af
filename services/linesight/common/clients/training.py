"""Client of the TrainingService (training jobs, model registry, releases)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, cast

from linesight.common.clients.base import PeerClient
from linesight.common.pb import training_pb2, training_pb2_grpc

UPLOAD_CHUNK_BYTES = 1024 * 1024  # far under the gRPC message limit, few enough messages


class TrainingClient(PeerClient[training_pb2_grpc.TrainingServiceStub]):
    """Thick client for the training API."""

    stub_class = training_pb2_grpc.TrainingServiceStub
    service_name = "training"
    default_timeout_s = 30.0

    async def start_training(
        self, product: str, dataset_version: str = "", *, incremental: bool = False, base_model: str = ""
    ) -> training_pb2.TrainingJob:
        """Not retried: a timed-out start may have queued a job already.

        `dataset_version` empty = the current confirmed labels (incremental: those since the base
        model); `base_model` empty = the product's production (else newest) model."""
        request = training_pb2.StartTrainingRequest(
            product=product, dataset_version=dataset_version, incremental=incremental, base_model=base_model
        )
        return await self._rpc("StartTraining", request, training_pb2.TrainingJob, idempotent=False)

    async def get_job(self, job_id: str) -> training_pb2.TrainingJob:
        request = training_pb2.GetTrainingJobRequest(job_id=job_id)
        return await self._rpc("GetTrainingJob", request, training_pb2.TrainingJob)

    async def cancel_job(self, job_id: str) -> training_pb2.TrainingJob:
        """Retried: cancelling a finished or already cancelled job returns it unchanged."""
        request = training_pb2.CancelTrainingJobRequest(job_id=job_id)
        return await self._rpc("CancelTrainingJob", request, training_pb2.TrainingJob)

    async def list_models(self, product: str = "") -> list[training_pb2.ModelEntry]:
        request = training_pb2.ListModelsRequest(product=product)
        response = await self._rpc("ListModels", request, training_pb2.ListModelsResponse)
        return list(response.models)

    async def promote_model(
        self, model_version: str, *, approved_by: str = "", reason: str = "", product: str = ""
    ) -> training_pb2.ModelEntry:
        """Not retried: a release is a recorded decision, made once by the approver. The service
        records the caller (the token's principal) as the approver and ignores `approved_by`."""
        request = training_pb2.PromoteModelRequest(
            product=product, model_version=model_version, approved_by=approved_by, reason=reason
        )
        return await self._rpc("PromoteModel", request, training_pb2.ModelEntry, idempotent=False)

    # ---- dataset versions ----------------------------------------------------------------

    async def import_dataset(
        self, product: str, directory: str, *, reason: str = "", parent_version: str = ""
    ) -> training_pb2.DatasetVersion:
        """Idempotent by content: importing the same files again returns the existing version."""
        request = training_pb2.ImportDatasetRequest(
            product=product, directory=directory, reason=reason, parent_version=parent_version
        )
        return await self._rpc("ImportDataset", request, training_pb2.DatasetVersion)

    async def upload_dataset(
        self,
        product: str,
        folder: Path,
        files: Sequence[str],
        *,
        reason: str = "",
        parent_version: str = "",
        on_bytes: Callable[[int], None] | None = None,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> training_pb2.DatasetVersion:
        """Stream `folder`'s `files` (relative paths, manifest.csv first) to the service, which
        imports them like a folder of its own. A file missing here is not sent (the import then
        names its row). Not retried: the stream is read once; uploading the same files again
        returns the existing version. `on_bytes` hears each chunk's size (a progress bar)."""

        async def messages() -> AsyncIterator[training_pb2.DatasetUploadChunk]:
            yield training_pb2.DatasetUploadChunk(
                header=training_pb2.DatasetUploadHeader(
                    product=product, reason=reason, parent_version=parent_version
                )
            )
            for name in files:
                path = folder / name
                if not path.is_file():
                    continue
                with path.open("rb") as fh:
                    data = fh.read(chunk_bytes)
                    while True:
                        following = fh.read(chunk_bytes) if data else b""
                        yield training_pb2.DatasetUploadChunk(
                            file=training_pb2.DatasetFileChunk(path=name, data=data, last=not following)
                        )
                        if on_bytes is not None:
                            on_bytes(len(data))
                        if not following:
                            break
                        data = following

        stream = cast(Any, messages())  # ServiceClient.call passes it on to the stub as it is
        return cast(training_pb2.DatasetVersion, await self.call("UploadDataset", stream, idempotent=False))

    async def create_dataset_version(
        self, product: str, *, reason: str = "", parent_version: str = ""
    ) -> training_pb2.DatasetVersion:
        request = training_pb2.CreateDatasetVersionRequest(
            product=product, reason=reason, parent_version=parent_version
        )
        return await self._rpc("CreateDatasetVersion", request, training_pb2.DatasetVersion)

    async def list_dataset_versions(self, product: str = "") -> list[training_pb2.DatasetVersion]:
        request = training_pb2.ListDatasetVersionsRequest(product=product)
        response = await self._rpc("ListDatasetVersions", request, training_pb2.ListDatasetVersionsResponse)
        return list(response.versions)

    async def get_dataset_version(self, version: str) -> training_pb2.DatasetVersion:
        request = training_pb2.GetDatasetVersionRequest(version=version)
        return await self._rpc("GetDatasetVersion", request, training_pb2.DatasetVersion)

    async def diff_dataset_versions(self, base: str, other: str) -> training_pb2.DatasetDiff:
        request = training_pb2.DiffDatasetVersionsRequest(base=base, other=other)
        return await self._rpc("DiffDatasetVersions", request, training_pb2.DatasetDiff)

    async def dataset_report(
        self, version: str, *, html: bool = False, learning_curve: bool = False
    ) -> training_pb2.DatasetReport:
        request = training_pb2.GetDatasetReportRequest(
            version=version, html=html, learning_curve=learning_curve
        )
        return await self._rpc("GetDatasetReport", request, training_pb2.DatasetReport)

    async def waive_dataset_finding(self, version: str, kind: str, reason: str) -> training_pb2.DatasetReport:
        """Not retried: a waiver is a recorded decision (a repeat keeps the first)."""
        request = training_pb2.WaiveDatasetFindingRequest(version=version, kind=kind, reason=reason)
        return await self._rpc("WaiveDatasetFinding", request, training_pb2.DatasetReport, idempotent=False)

    # ---- registry stages, release gates, shadow comparison, rollback ---------------------

    async def get_model(self, model_version: str) -> training_pb2.ModelEntry:
        request = training_pb2.GetModelRequest(model_version=model_version)
        return await self._rpc("GetModel", request, training_pb2.ModelEntry)

    async def set_model_stage(
        self, model_version: str, stage: str, *, reason: str = ""
    ) -> training_pb2.ModelEntry:
        """shadow, candidate or archived (production: promote_model / rollback_model)."""
        request = training_pb2.SetModelStageRequest(model_version=model_version, stage=stage, reason=reason)
        return await self._rpc("SetModelStage", request, training_pb2.ModelEntry, idempotent=False)

    async def rollback_model(
        self, *, product: str = "", model_version: str = "", reason: str
    ) -> training_pb2.ModelEntry:
        """Not retried: a rollback is a recorded decision. Empty version: the previous production one."""
        request = training_pb2.RollbackModelRequest(
            product=product, model_version=model_version, reason=reason
        )
        return await self._rpc("RollbackModel", request, training_pb2.ModelEntry, idempotent=False)

    async def set_release_gate(
        self, product: str, gate_yaml: str, *, reason: str
    ) -> training_pb2.ReleaseGateVersion:
        request = training_pb2.SetReleaseGateRequest(product=product, gate_yaml=gate_yaml, reason=reason)
        return await self._rpc("SetReleaseGate", request, training_pb2.ReleaseGateVersion, idempotent=False)

    async def get_release_gate(self, product: str, version: int = 0) -> training_pb2.ReleaseGateVersion:
        request = training_pb2.GetReleaseGateRequest(product=product, version=version)
        return await self._rpc("GetReleaseGate", request, training_pb2.ReleaseGateVersion)

    async def gate_report(self, model_version: str, *, html: bool = False) -> training_pb2.GateReport:
        request = training_pb2.GetGateReportRequest(model_version=model_version, html=html)
        return await self._rpc("GetGateReport", request, training_pb2.GateReport)

    async def shadow_report(self, model_version: str = "", *, product: str = "") -> training_pb2.ShadowReport:
        request = training_pb2.GetShadowReportRequest(model_version=model_version, product=product)
        return await self._rpc("GetShadowReport", request, training_pb2.ShadowReport)
