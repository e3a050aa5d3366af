"""Who may do what with taxonomies. Product scope (drafting needs qa_owner or engineer *of that
product*, approving needs its qa_owner) is checked again in the app, because a gRPC request's
product is only known inside the request."""

from __future__ import annotations

from linesight.common.identity.model import Role
from linesight.common.identity.policy import Policy

READERS = frozenset(Role)  # every authenticated role (labeler ... admin, service)
DRAFTERS = {Role.QA_OWNER, Role.ENGINEER}
APPROVERS = {Role.QA_OWNER}
RPC = "linesight.v1.TaxonomyService/"

POLICY = Policy(
    rules={
        "taxonomy.read": READERS,
        "taxonomy.draft": DRAFTERS,
        "taxonomy.approve": APPROVERS,
        RPC + "GetTaxonomy": READERS,
        RPC + "ListVersions": READERS,
        RPC + "GetDraft": READERS,
        RPC + "ListDrafts": READERS,
        RPC + "DiffVersions": READERS,
        RPC + "CreateDraft": DRAFTERS,
        RPC + "UpdateDraft": DRAFTERS,
        RPC + "SubmitDraft": DRAFTERS,
        RPC + "ApproveDraft": APPROVERS,
        RPC + "RejectDraft": APPROVERS,
        RPC + "PublishTaxonomy": APPROVERS,
    }
)
