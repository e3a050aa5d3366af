"""Who may call the inference service: the synchronous Inspect writes a disposition for the part it
names, so only machine accounts (the PLC gateway) may call it; recalibration moves a station's
defect threshold, so it is an engineer's decision; model info is readable by anyone signed in."""

from __future__ import annotations

from linesight.common.identity.model import Role
from linesight.common.identity.policy import Policy

SERVICE = "linesight.v1.InferenceService"
INSPECT = f"{SERVICE}/Inspect"
GET_MODEL_INFO = f"{SERVICE}/GetModelInfo"
RECALIBRATE = f"{SERVICE}/Recalibrate"

POLICY = Policy(
    rules={
        INSPECT: {Role.SERVICE},
        GET_MODEL_INFO: set(Role),
        RECALIBRATE: {Role.ENGINEER},
    }
)
