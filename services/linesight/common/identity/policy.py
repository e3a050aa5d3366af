"""Deny by default: which roles may run which operation, declared in one place per service.

An operation is a plain name: `<service>.<action>` for HTTP routes (`labeling.submit_label`) and
the gRPC method's full name without the leading slash for RPCs
(`linesight.v1.LabelingService/SubmitLabel`), so the role x endpoint matrix test can enumerate
routes and service descriptors and look each one up here. Anything not declared is refused.

`admin` is NOT implied: admins manage accounts and configuration, while quality decisions
(reviewing labels, approving models, dispositions) need the business role, so an admin account
cannot sign off a quality record without first granting itself that role, which the audit trail
records. Rules that admins should pass list `admin` explicitly.

Policy format (Python or the equivalent YAML/JSON mapping for `Policy.from_mapping`):

    Policy(
        public={"labeling.healthz", "labeling.login"},
        rules={"labeling.submit_label": {Role.LABELER, Role.REVIEWER}},
    )
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from linesight.common.identity.model import Forbidden, Principal, Role


class Policy:
    """`rules`: operation -> roles allowed; `public`: operations that need no identity at all."""

    __slots__ = ("public", "rules")

    def __init__(
        self, rules: Mapping[str, Iterable[Role | str]] | None = None, public: Iterable[str] = ()
    ) -> None:
        for op, roles in (rules or {}).items():
            if isinstance(roles, str):
                raise ValueError(f"operation {op!r}: roles must be a list, got the string {roles!r}")
        normalised = {op: frozenset(Role(r) for r in roles) for op, roles in (rules or {}).items()}
        for op, roles in normalised.items():
            if not roles:
                raise ValueError(f"operation {op!r} allows no role; leave it out to deny it")
        public_ops = frozenset(public)
        both = sorted(set(normalised) & public_ops)
        if both:
            raise ValueError(f"operations both public and role-restricted: {both}")
        self.rules: Mapping[str, frozenset[Role]] = MappingProxyType(normalised)
        self.public: frozenset[str] = public_ops

    def __repr__(self) -> str:
        return f"Policy({len(self.rules)} rules, {len(self.public)} public)"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Policy:
        """`{"public": [op, ...], "operations": {op: [role, ...]}}` (as read from YAML)."""
        unknown = set(data) - {"public", "operations"}
        if unknown:
            raise ValueError(f"unknown policy keys {sorted(unknown)}; expected 'public' and 'operations'")
        ops = data.get("operations") or {}
        return cls(rules=ops, public=data.get("public") or ())

    def merge(self, *others: Policy) -> Policy:
        """One policy from several (e.g. each service's own); an operation declared twice is an error."""
        rules = dict(self.rules)
        public = set(self.public)
        for other in others:
            clash = sorted((set(rules) | public) & (set(other.rules) | other.public))
            if clash:
                raise ValueError(f"operations declared in more than one policy: {clash}")
            rules.update(other.rules)
            public |= other.public
        return Policy(rules=rules, public=public)

    def is_public(self, operation: str) -> bool:
        return operation in self.public

    def declares(self, operation: str) -> bool:
        return operation in self.public or operation in self.rules

    def allowed_roles(self, operation: str) -> frozenset[Role]:
        """Roles that may run `operation` (empty when undeclared or public)."""
        return self.rules.get(operation, frozenset())

    def unmapped(self, operations: Iterable[str]) -> list[str]:
        """The given operations this policy does not declare (sorted), for the endpoint matrix test."""
        return sorted({op for op in operations if not self.declares(op)})

    def authorize(
        self,
        principal: Principal | None,
        operation: str,
        plant: str | None = None,
        product: str | None = None,
    ) -> None:
        """Return if allowed; raise Forbidden otherwise (undeclared operations included).

        Callers handle `principal is None` for non-public operations as 401 before calling; a
        None principal reaching here for a protected operation is refused as Forbidden.
        """
        if operation in self.public:
            return
        allowed = self.rules.get(operation)
        if allowed is None:
            raise Forbidden(f"operation {operation!r} is not in the policy (denied by default)")
        if principal is None or not (principal.roles_at(plant, product) & allowed):
            where = "" if plant is None and product is None else f" on {plant or '*'}/{product or '*'}"
            who = principal.name if principal else "anonymous"
            raise Forbidden(
                f"{who} may not {operation}{where}: needs one of {sorted(r.value for r in allowed)}"
            )
