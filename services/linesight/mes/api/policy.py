"""Who may call the MES integration: redelivering sends a disposition to the plant's MES again, so
engineers and admins only; dispatch status and outbox counts are readable by anyone signed in."""

from __future__ import annotations

from linesight.common.identity.model import Role
from linesight.common.identity.policy import Policy

SERVICE = "linesight.v1.MesIntegrationService"
GET_DISPATCH_STATUS = f"{SERVICE}/GetDispatchStatus"
REDELIVER = f"{SERVICE}/Redeliver"
# HTTP routes (mes/api/http.py)
HTTP_OUTBOX = "mes.outbox"
HTTP_DISPATCH_STATUS = "mes.dispatch_status"
HTTP_REDELIVER = "mes.redeliver"

POLICY = Policy(
    rules={
        GET_DISPATCH_STATUS: set(Role),
        REDELIVER: {Role.ENGINEER, Role.ADMIN},
        HTTP_OUTBOX: set(Role),
        HTTP_DISPATCH_STATUS: set(Role),
        HTTP_REDELIVER: {Role.ENGINEER, Role.ADMIN},
    }
)
