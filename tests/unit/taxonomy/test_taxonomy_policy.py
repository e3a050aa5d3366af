"""The taxonomy policy: every RPC is declared, readers are everyone, approval is the qa_owner's."""

import pytest

from linesight.common.identity.grpc import service_operations
from linesight.common.identity.model import Forbidden, Grant, Principal, Role
from linesight.common.pb import taxonomy_pb2
from linesight.taxonomy.api.policy import POLICY, RPC

SERVICE = taxonomy_pb2.DESCRIPTOR.services_by_name["TaxonomyService"]


def who(role: str) -> Principal:
    return Principal("s", "s", "user", (Grant.parse(f"{role}@plant1/tile"),))


def test_every_rpc_is_in_the_policy() -> None:
    assert POLICY.unmapped(service_operations(SERVICE)) == []


@pytest.mark.parametrize("role", [r.value for r in Role])
def test_every_role_reads(role: str) -> None:
    for op in ("taxonomy.read", RPC + "GetTaxonomy", RPC + "DiffVersions", RPC + "ListDrafts"):
        POLICY.authorize(who(role), op)


@pytest.mark.parametrize(
    ("op", "allowed"),
    [
        ("taxonomy.draft", {"qa_owner", "engineer"}),
        (RPC + "SubmitDraft", {"qa_owner", "engineer"}),
        ("taxonomy.approve", {"qa_owner"}),
        (RPC + "ApproveDraft", {"qa_owner"}),
        (RPC + "RejectDraft", {"qa_owner"}),
        (RPC + "PublishTaxonomy", {"qa_owner"}),
    ],
)
def test_writes_are_restricted(op: str, allowed: set[str]) -> None:
    for role in Role:
        if role.value in allowed:
            POLICY.authorize(who(role.value), op)
        else:
            with pytest.raises(Forbidden):
                POLICY.authorize(who(role.value), op)
