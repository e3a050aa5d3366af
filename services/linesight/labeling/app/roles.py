"""Who may do what in labeling: the one table both the transport policy (api/policy.py) and the
use cases' product-scoped checks read, so the two cannot drift apart."""

from __future__ import annotations

from linesight.common.identity import Forbidden, Principal, Role

L, R, Q, OP, E, A = Role.LABELER, Role.REVIEWER, Role.QA_OWNER, Role.LINE_OPERATOR, Role.ENGINEER, Role.ADMIN

VIEW = "labeling.view"  # results, queues, stats, the page
LABEL = "labeling.label"  # first pass, and editing one's own first pass before review
CLAIM = "labeling.claim"  # claim and release queue items
REVIEW = "labeling.review"  # second pass: accept or reject with a correction
DECIDE = "labeling.decide"  # final decision on a dispute
ASSIGN = "labeling.assign"  # hand a queue item to one person
OVERRIDE = "labeling.override"  # line operator overrides a machine verdict
SAMPLE_CREATE = "labeling.sample_create"  # start a shared agreement sample
SAMPLE_LABEL = "labeling.sample_label"  # label a frame of a shared sample independently
AGREEMENT = "labeling.agreement"  # kappa and disagreement figures
AUDIT_READ = "labeling.audit_read"
AUDIT_VERIFY = "labeling.audit_verify"

ROLES: dict[str, frozenset[Role]] = {
    VIEW: frozenset({L, R, Q, OP, E, A}),
    LABEL: frozenset({L, R, Q}),
    CLAIM: frozenset({L, R, Q}),
    REVIEW: frozenset({R, Q}),
    DECIDE: frozenset({Q}),
    ASSIGN: frozenset({Q}),
    OVERRIDE: frozenset({OP}),
    SAMPLE_CREATE: frozenset({Q}),
    SAMPLE_LABEL: frozenset({L, R, Q}),
    AGREEMENT: frozenset({R, Q, E, A}),
    AUDIT_READ: frozenset({Q, A}),
    AUDIT_VERIFY: frozenset({Q, A}),
}
# The role an audit record names when the caller holds several that allow the action.
_PREFERENCE = (Q, R, L, OP, E, A)


def acting_role(principal: Principal, action: str, plant: str | None, product: str | None) -> Role:
    """The role under which `principal` may run `action` on this plant/product; Forbidden otherwise."""
    held = principal.roles_at(plant, product) & ROLES[action]
    if not held:
        where = f" on {plant or '*'}/{product or '*'}"
        raise Forbidden(
            f"{principal.name} may not {action}{where}: needs one of {sorted(r.value for r in ROLES[action])}"
        )
    return next(r for r in _PREFERENCE if r in held)
