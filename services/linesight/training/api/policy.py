"""Who may call the training service: releasing a model to production is the QA owner's signature
(checked again against the model's product), starting a training run an engineer's or QA owner's
decision; jobs and the registry are readable by anyone signed in."""

from __future__ import annotations

from linesight.common.identity.model import Role
from linesight.common.identity.policy import Policy

SERVICE = "linesight.v1.TrainingService"
START_TRAINING = f"{SERVICE}/StartTraining"
GET_TRAINING_JOB = f"{SERVICE}/GetTrainingJob"
LIST_MODELS = f"{SERVICE}/ListModels"
PROMOTE_MODEL = f"{SERVICE}/PromoteModel"

POLICY = Policy(
    rules={
        START_TRAINING: {Role.ENGINEER, Role.QA_OWNER},
        GET_TRAINING_JOB: set(Role),
        LIST_MODELS: set(Role),
        PROMOTE_MODEL: {Role.QA_OWNER},
    }
)
