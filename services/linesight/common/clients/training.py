"""Client of the TrainingService (training jobs, model registry, releases)."""

from __future__ import annotations

from linesight.common.grpcutil import ServiceClient, TokenSource
from linesight.common.pb import training_pb2, training_pb2_grpc


class TrainingClient(ServiceClient[training_pb2_grpc.TrainingServiceStub]):
    """Thick client for the training API."""

    def __init__(self, target: str, *, timeout_s: float = 30.0, token: TokenSource | None = None) -> None:
        super().__init__(
            target,
            training_pb2_grpc.TrainingServiceStub,
            service="training",
            timeout_s=timeout_s,
            token=token,
        )

    async def start_training(
        self, product: str, dataset_version: str = "", *, incremental: bool = False, base_model: str = ""
    ) -> training_pb2.TrainingJob:
        """Not retried: a timed-out start may have queued a job already.

        `dataset_version` empty = the current confirmed labels (incremental: those since the base
        model); `base_model` empty = the product's production (else newest) model."""
        request = training_pb2.StartTrainingRequest(
            product=product, dataset_version=dataset_version, incremental=incremental, base_model=base_model
        )
        result: training_pb2.TrainingJob = await self.call("StartTraining", request, idempotent=False)
        return result

    async def get_job(self, job_id: str) -> training_pb2.TrainingJob:
        request = training_pb2.GetTrainingJobRequest(job_id=job_id)
        result: training_pb2.TrainingJob = await self.call("GetTrainingJob", request)
        return result

    async def cancel_job(self, job_id: str) -> training_pb2.TrainingJob:
        """Retried: cancelling a finished or already cancelled job returns it unchanged."""
        request = training_pb2.CancelTrainingJobRequest(job_id=job_id)
        result: training_pb2.TrainingJob = await self.call("CancelTrainingJob", request)
        return result

    async def list_models(self, product: str = "") -> list[training_pb2.ModelEntry]:
        request = training_pb2.ListModelsRequest(product=product)
        response: training_pb2.ListModelsResponse = await self.call("ListModels", request)
        return list(response.models)

    async def promote_model(
        self, model_version: str, *, approved_by: str = "", reason: str = "", product: str = ""
    ) -> training_pb2.ModelEntry:
        """Not retried: a release is a recorded decision, made once by the approver. The service
        records the caller (the token's principal) as the approver and ignores `approved_by`."""
        request = training_pb2.PromoteModelRequest(
            product=product, model_version=model_version, approved_by=approved_by, reason=reason
        )
        result: training_pb2.ModelEntry = await self.call("PromoteModel", request, idempotent=False)
        return result

    # ---- dataset versions ----------------------------------------------------------------

    async def import_dataset(
        self, product: str, directory: str, *, reason: str = "", parent_version: str = ""
    ) -> training_pb2.DatasetVersion:
        """Idempotent by content: importing the same files again returns the existing version."""
        request = training_pb2.ImportDatasetRequest(
            product=product, directory=directory, reason=reason, parent_version=parent_version
        )
        result: training_pb2.DatasetVersion = await self.call("ImportDataset", request)
        return result

    async def create_dataset_version(
        self, product: str, *, reason: str = "", parent_version: str = ""
    ) -> training_pb2.DatasetVersion:
        request = training_pb2.CreateDatasetVersionRequest(
            product=product, reason=reason, parent_version=parent_version
        )
        result: training_pb2.DatasetVersion = await self.call("CreateDatasetVersion", request)
        return result

    async def list_dataset_versions(self, product: str = "") -> list[training_pb2.DatasetVersion]:
        request = training_pb2.ListDatasetVersionsRequest(product=product)
        response: training_pb2.ListDatasetVersionsResponse = await self.call("ListDatasetVersions", request)
        return list(response.versions)

    async def get_dataset_version(self, version: str) -> training_pb2.DatasetVersion:
        request = training_pb2.GetDatasetVersionRequest(version=version)
        result: training_pb2.DatasetVersion = await self.call("GetDatasetVersion", request)
        return result

    async def diff_dataset_versions(self, base: str, other: str) -> training_pb2.DatasetDiff:
        request = training_pb2.DiffDatasetVersionsRequest(base=base, other=other)
        result: training_pb2.DatasetDiff = await self.call("DiffDatasetVersions", request)
        return result

    async def dataset_report(
        self, version: str, *, html: bool = False, learning_curve: bool = False
    ) -> training_pb2.DatasetReport:
        request = training_pb2.GetDatasetReportRequest(
            version=version, html=html, learning_curve=learning_curve
        )
        result: training_pb2.DatasetReport = await self.call("GetDatasetReport", request)
        return result

    async def waive_dataset_finding(self, version: str, kind: str, reason: str) -> training_pb2.DatasetReport:
        """Not retried: a waiver is a recorded decision (a repeat keeps the first)."""
        request = training_pb2.WaiveDatasetFindingRequest(version=version, kind=kind, reason=reason)
        result: training_pb2.DatasetReport = await self.call("WaiveDatasetFinding", request, idempotent=False)
        return result

    # ---- registry stages, release gates, shadow comparison, rollback ---------------------

    async def get_model(self, model_version: str) -> training_pb2.ModelEntry:
        request = training_pb2.GetModelRequest(model_version=model_version)
        result: training_pb2.ModelEntry = await self.call("GetModel", request)
        return result

    async def set_model_stage(
        self, model_version: str, stage: str, *, reason: str = ""
    ) -> training_pb2.ModelEntry:
        """shadow, candidate or archived (production: promote_model / rollback_model)."""
        request = training_pb2.SetModelStageRequest(model_version=model_version, stage=stage, reason=reason)
        result: training_pb2.ModelEntry = await self.call("SetModelStage", request, idempotent=False)
        return result

    async def rollback_model(
        self, *, product: str = "", model_version: str = "", reason: str
    ) -> training_pb2.ModelEntry:
        """Not retried: a rollback is a recorded decision. Empty version: the previous production one."""
        request = training_pb2.RollbackModelRequest(
            product=product, model_version=model_version, reason=reason
        )
        result: training_pb2.ModelEntry = await self.call("RollbackModel", request, idempotent=False)
        return result

    async def set_release_gate(
        self, product: str, gate_yaml: str, *, reason: str
    ) -> training_pb2.ReleaseGateVersion:
        request = training_pb2.SetReleaseGateRequest(product=product, gate_yaml=gate_yaml, reason=reason)
        result: training_pb2.ReleaseGateVersion = await self.call("SetReleaseGate", request, idempotent=False)
        return result

    async def get_release_gate(self, product: str, version: int = 0) -> training_pb2.ReleaseGateVersion:
        request = training_pb2.GetReleaseGateRequest(product=product, version=version)
        result: training_pb2.ReleaseGateVersion = await self.call("GetReleaseGate", request)
        return result

    async def gate_report(self, model_version: str, *, html: bool = False) -> training_pb2.GateReport:
        request = training_pb2.GetGateReportRequest(model_version=model_version, html=html)
        result: training_pb2.GateReport = await self.call("GetGateReport", request)
        return result

    async def shadow_report(self, model_version: str = "", *, product: str = "") -> training_pb2.ShadowReport:
        request = training_pb2.GetShadowReportRequest(model_version=model_version, product=product)
        result: training_pb2.ShadowReport = await self.call("GetShadowReport", request)
        return result
