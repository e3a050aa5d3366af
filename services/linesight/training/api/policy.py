"""Who may call the training service: releasing a model to production is the QA owner's signature
(checked again against the model's product), starting a training run an engineer's or QA owner's
decision; jobs and the registry are readable by anyone signed in."""

from __future__ import annotations

from linesight.common.identity.model import Role
from linesight.common.identity.policy import Policy

SERVICE = "linesight.v1.TrainingService"
START_TRAINING = f"{SERVICE}/StartTraining"
GET_TRAINING_JOB = f"{SERVICE}/GetTrainingJob"
CANCEL_TRAINING_JOB = f"{SERVICE}/CancelTrainingJob"
LIST_MODELS = f"{SERVICE}/ListModels"
PROMOTE_MODEL = f"{SERVICE}/PromoteModel"
IMPORT_DATASET = f"{SERVICE}/ImportDataset"
UPLOAD_DATASET = f"{SERVICE}/UploadDataset"
CREATE_DATASET_VERSION = f"{SERVICE}/CreateDatasetVersion"
LIST_DATASET_VERSIONS = f"{SERVICE}/ListDatasetVersions"
GET_DATASET_VERSION = f"{SERVICE}/GetDatasetVersion"
DIFF_DATASET_VERSIONS = f"{SERVICE}/DiffDatasetVersions"
GET_DATASET_REPORT = f"{SERVICE}/GetDatasetReport"
WAIVE_DATASET_FINDING = f"{SERVICE}/WaiveDatasetFinding"
# registry stages, release gates, shadow comparison, rollback
GET_MODEL = f"{SERVICE}/GetModel"
SET_MODEL_STAGE = f"{SERVICE}/SetModelStage"
ROLLBACK_MODEL = f"{SERVICE}/RollbackModel"
SET_RELEASE_GATE = f"{SERVICE}/SetReleaseGate"
GET_RELEASE_GATE = f"{SERVICE}/GetReleaseGate"
GET_GATE_REPORT = f"{SERVICE}/GetGateReport"
GET_SHADOW_REPORT = f"{SERVICE}/GetShadowReport"

POLICY = Policy(
    rules={
        START_TRAINING: {Role.ENGINEER, Role.QA_OWNER},
        GET_TRAINING_JOB: set(Role),
        # Stopping a run is the decision of those who may start one.
        CANCEL_TRAINING_JOB: {Role.ENGINEER, Role.QA_OWNER},
        LIST_MODELS: set(Role),
        PROMOTE_MODEL: {Role.QA_OWNER},
        # Dataset versions: engineers and QA owners create them, anyone reads them, only a QA
        # owner accepts a blocking hygiene finding (checked again against the version's product).
        IMPORT_DATASET: {Role.ENGINEER, Role.QA_OWNER},
        UPLOAD_DATASET: {Role.ENGINEER, Role.QA_OWNER},  # an import from the caller's disk
        CREATE_DATASET_VERSION: {Role.ENGINEER, Role.QA_OWNER},
        LIST_DATASET_VERSIONS: set(Role),
        GET_DATASET_VERSION: set(Role),
        DIFF_DATASET_VERSIONS: set(Role),
        GET_DATASET_REPORT: set(Role),
        WAIVE_DATASET_FINDING: {Role.QA_OWNER},
        # Registry: anyone reads; engineers and QA owners put a candidate in shadow; the gate,
        # a release and a rollback are the QA owner's (checked again against the model's product).
        GET_MODEL: set(Role),
        SET_MODEL_STAGE: {Role.ENGINEER, Role.QA_OWNER},
        ROLLBACK_MODEL: {Role.QA_OWNER},
        SET_RELEASE_GATE: {Role.QA_OWNER},
        GET_RELEASE_GATE: set(Role),
        GET_GATE_REPORT: set(Role),
        GET_SHADOW_REPORT: set(Role),
    }
)
