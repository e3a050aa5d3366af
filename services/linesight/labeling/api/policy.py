"""Labeling's deny-by-default policy: every HTTP operation and gRPC method, and who may run it.

The role sets come from app/roles.py (the use cases check the same sets again on the frame's
plant and product). Login, token exchange and the key set are public: they are how a caller
gets an identity in the first place.
"""

from __future__ import annotations

from linesight.common.identity import Policy
from linesight.labeling.app import roles

LOGIN_PAGE = "labeling.login_page"
LOGIN = "labeling.login"
LOGOUT = "labeling.logout"
REFRESH = "labeling.refresh"
JWKS = "labeling.jwks"
TOKEN = "labeling.token"
OIDC_LOGIN = "labeling.oidc_login"
OIDC_CALLBACK = "labeling.oidc_callback"

_RPC = "linesight.v1.LabelingService/"
RPC_OPERATIONS = {
    "ListReviewQueue": roles.VIEW,
    "GetLedgerStats": roles.VIEW,
    "GetQueueStats": roles.VIEW,
    "SubmitLabel": roles.LABEL,
    "ClaimItem": roles.CLAIM,
    "ReleaseItem": roles.CLAIM,
    "ReviewLabel": roles.REVIEW,
    "DecideDispute": roles.DECIDE,
    "RecordOverride": roles.OVERRIDE,
    "GetAgreement": roles.AGREEMENT,
    "ListAudit": roles.AUDIT_READ,
    "VerifyAudit": roles.AUDIT_VERIFY,
}

POLICY = Policy(
    public={LOGIN_PAGE, LOGIN, LOGOUT, REFRESH, JWKS, TOKEN, OIDC_LOGIN, OIDC_CALLBACK},
    rules={
        **roles.ROLES,
        # Release is open to whoever may claim; the use case lets only the holder or a QA owner do it.
        **{_RPC + method: roles.ROLES[op] for method, op in RPC_OPERATIONS.items()},
    },
)
