"""Grants, principals and the deny-by-default policy."""

from __future__ import annotations

import pytest

from linesight.common.identity import Forbidden, Grant, Policy, Principal, Role


def user(*grants: str) -> Principal:
    return Principal("u_1", "Ann", "user", tuple(Grant.parse(g) for g in grants))


POLICY = Policy(
    public={"labeling.healthz"},
    rules={
        "labeling.submit_label": {Role.LABELER, Role.REVIEWER},
        "labeling.adjudicate": {Role.REVIEWER},
        "labeling.manage_users": {Role.ADMIN},
    },
)


def test_grant_text_round_trips_and_defaults_to_any() -> None:
    assert str(Grant.parse("reviewer@plant1/widget")) == "reviewer@plant1/widget"
    assert Grant.parse("admin") == Grant(Role.ADMIN, "*", "*")
    assert Grant.parse("labeler@plant2") == Grant(Role.LABELER, "plant2", "*")
    with pytest.raises(ValueError, match="roles: labeler"):
        Grant.parse("wizard@plant1")
    with pytest.raises(ValueError, match="invalid plant"):
        Grant(Role.LABELER, "plant 1")


def test_scope_matching_unscoped_specific_and_wildcard_requests() -> None:
    p = user("reviewer@plant1/*")
    assert p.has(Role.REVIEWER)  # unscoped operation: the role anywhere
    assert p.has(Role.REVIEWER, "plant1", "widget")
    assert not p.has(Role.REVIEWER, "plant2", "widget")
    assert not p.has(Role.REVIEWER, "*")  # across all plants needs a plant-wide grant
    assert not p.has(Role.LABELER, "plant1")
    assert user("reviewer").has(Role.REVIEWER, "*", "*")


def test_authorize_allows_listed_roles_in_scope() -> None:
    POLICY.authorize(user("labeler@plant1"), "labeling.submit_label", "plant1", "widget")
    with pytest.raises(Forbidden, match=r"Ann may not labeling.submit_label on plant2/widget.*labeler"):
        POLICY.authorize(user("labeler@plant1"), "labeling.submit_label", "plant2", "widget")
    with pytest.raises(Forbidden, match="needs one of"):
        POLICY.authorize(user("labeler"), "labeling.adjudicate")


def test_undeclared_operations_are_denied_even_to_admins() -> None:
    with pytest.raises(Forbidden, match="not in the policy"):
        POLICY.authorize(user("admin"), "labeling.delete_everything")


def test_admin_is_not_implied_for_quality_decisions() -> None:
    POLICY.authorize(user("admin"), "labeling.manage_users")
    with pytest.raises(Forbidden):
        POLICY.authorize(user("admin"), "labeling.adjudicate")


def test_public_operations_need_no_principal_and_protected_ones_refuse_none() -> None:
    POLICY.authorize(None, "labeling.healthz")
    with pytest.raises(Forbidden, match="anonymous"):
        POLICY.authorize(None, "labeling.submit_label")


def test_unmapped_lists_what_the_policy_does_not_declare() -> None:
    ops = ["labeling.healthz", "labeling.submit_label", "labeling.new_thing", "labeling.new_thing"]
    assert POLICY.unmapped(ops) == ["labeling.new_thing"]


def test_from_mapping_and_merge_refuse_ambiguity() -> None:
    other = Policy.from_mapping(
        {"public": ["training.healthz"], "operations": {"training.promote": ["qa_owner"]}}
    )
    merged = POLICY.merge(other)
    assert merged.allowed_roles("training.promote") == {Role.QA_OWNER}
    assert merged.is_public("training.healthz")
    with pytest.raises(ValueError, match="more than one policy"):
        merged.merge(other)
    with pytest.raises(ValueError, match="both public and role-restricted"):
        Policy(public={"x.y"}, rules={"x.y": {Role.ADMIN}})
    with pytest.raises(ValueError, match="allows no role"):
        Policy(rules={"x.y": frozenset()})
    with pytest.raises(ValueError, match="must be a list"):
        Policy.from_mapping({"operations": {"x.y": "labeler"}})
    with pytest.raises(ValueError, match="not a valid Role"):
        Policy.from_mapping({"operations": {"x.y": ["wizard"]}})
    with pytest.raises(ValueError, match="unknown policy keys"):
        Policy.from_mapping({"rules": {}})
