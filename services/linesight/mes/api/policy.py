"""Who may call the MES integration: redelivering sends a disposition to the plant's MES again, so
engineers and admins only; dispatch status and outbox counts are readable by anyone signed in.

The inbound MES API is scoped to the plant in its path. MES clients (service accounts with the
`mes_client` role on their plant) push part context, hold and release, and query; QA owners may
hold and release too (a hold is a quality decision); engineers, line operators and admins read.
"""

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
# Inbound MES API
HTTP_PART_CONTEXT_WRITE = "mes.part_context.write"
HTTP_PART_CONTEXT_READ = "mes.part_context.read"
HTTP_HOLD = "mes.hold"
HTTP_RELEASE_HOLD = "mes.hold.release"
HTTP_QUERY_HOLDS = "mes.holds.read"
HTTP_QUERY_RESULTS = "mes.results.read"
HTTP_DELIVERY_STATUS = "mes.delivery.read"

_READERS = {Role.MES_CLIENT, Role.QA_OWNER, Role.ENGINEER, Role.LINE_OPERATOR, Role.ADMIN}

POLICY = Policy(
    rules={
        GET_DISPATCH_STATUS: set(Role),
        REDELIVER: {Role.ENGINEER, Role.ADMIN},
        HTTP_OUTBOX: set(Role),
        HTTP_DISPATCH_STATUS: set(Role),
        HTTP_REDELIVER: {Role.ENGINEER, Role.ADMIN},
        HTTP_PART_CONTEXT_WRITE: {Role.MES_CLIENT, Role.ADMIN},
        HTTP_PART_CONTEXT_READ: _READERS,
        HTTP_HOLD: {Role.MES_CLIENT, Role.QA_OWNER, Role.ADMIN},
        HTTP_RELEASE_HOLD: {Role.MES_CLIENT, Role.QA_OWNER, Role.ADMIN},
        HTTP_QUERY_HOLDS: _READERS,
        HTTP_QUERY_RESULTS: _READERS,
        HTTP_DELIVERY_STATUS: _READERS,
    }
)
