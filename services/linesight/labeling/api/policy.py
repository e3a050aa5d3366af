"""Labeling's deny-by-default policy: every HTTP operation and gRPC method, and who may run it.

The role sets come from app/roles.py (the use cases check the same sets again on the frame's
plant and product). Login, token exchange and the key set are public: they are how a caller
gets an identity in the first place.
"""

from __future__ import annotations

from linesight.common.identity import Policy, Role
from linesight.labeling.app import roles

LOGIN_PAGE = "labeling.login_page"
LOGIN = "labeling.login"
LOGOUT = "labeling.logout"
REFRESH = "labeling.refresh"
JWKS = "labeling.jwks"
TOKEN = "labeling.token"
OIDC_LOGIN = "labeling.oidc_login"
OIDC_CALLBACK = "labeling.oidc_callback"

# The taxonomy editor's pages and calls. The taxonomy service decides again, on the user's own
# token, who may draft (qa_owner, engineer of the product) and who may approve (its qa_owner).
TAXONOMY_EDIT = "labeling.taxonomy_edit"
TAXONOMY_APPROVE = "labeling.taxonomy_approve"
UI_ROLES: dict[str, frozenset[Role]] = {
    TAXONOMY_EDIT: frozenset({Role.QA_OWNER, Role.ENGINEER}),
    TAXONOMY_APPROVE: frozenset({Role.QA_OWNER}),
}
# Every HTTP operation and the roles it admits (the pages show a link or a button by it).
ROLES: dict[str, frozenset[Role]] = {**roles.ROLES, **UI_ROLES}

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
        **ROLES,
        # Release is open to whoever may claim; the use case lets only the holder or a QA owner do it.
        **{_RPC + method: roles.ROLES[op] for method, op in RPC_OPERATIONS.items()},
    },
)
