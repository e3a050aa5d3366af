"""Who is calling: roles, plant/product-scoped grants, principals, and the two auth errors.

A grant is written `role@plant/product` in config, CLI and OIDC group maps (`*` = any), e.g.
`reviewer@plant1/*`; one string form keeps those three places readable and diffable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

ANY = "*"
_SCOPE = re.compile(r"^(\*|[A-Za-z0-9_.:-]{1,128})$")


class Role(StrEnum):
    LABELER = "labeler"
    REVIEWER = "reviewer"
    QA_OWNER = "qa_owner"
    LINE_OPERATOR = "line_operator"
    ENGINEER = "engineer"
    ADMIN = "admin"
    SERVICE = "service"  # machine accounts: services calling each other, edge agents
    MES_CLIENT = "mes_client"  # a plant's MES/ERP calling the MES inbound API (context, holds, queries)


class Unauthenticated(Exception):  # noqa: N818 - maps 1:1 to HTTP 401 / gRPC UNAUTHENTICATED
    """No credential, or one that is invalid or expired; the message says which, never why in detail."""


class Forbidden(PermissionError):  # noqa: N818 - maps 1:1 to HTTP 403 / gRPC PERMISSION_DENIED
    """Authenticated, but no grant allows this operation here (or a CSRF check failed).

    A PermissionError, so grpcutil's error mapping already turns it into PERMISSION_DENIED.
    """


def _scope(value: str, what: str) -> str:
    if not _SCOPE.match(value):
        raise ValueError(f"invalid {what} {value!r}: letters, digits, '_.:-' or '*' for any")
    return value


@dataclass(frozen=True, slots=True)
class Grant:
    """`role` on one plant and product; `*` matches any."""

    role: Role
    plant: str = ANY
    product: str = ANY

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))
        _scope(self.plant, "plant")
        _scope(self.product, "product")

    def covers(self, plant: str | None, product: str | None) -> bool:
        """True when this grant applies to `plant`/`product`.

        None = the operation is not scoped to one (any grant of the role will do; the handler
        filters what it returns); `*` = across all of them, which only a `*` grant covers.
        """
        return (plant is None or self.plant in (ANY, plant)) and (
            product is None or self.product in (ANY, product)
        )

    def __str__(self) -> str:
        return f"{self.role}@{self.plant}/{self.product}"

    @classmethod
    def parse(cls, text: str) -> Grant:
        """`role`, `role@plant` or `role@plant/product`."""
        role, _, where = text.strip().partition("@")
        plant, _, product = where.partition("/")
        try:
            return cls(Role(role), plant or ANY, product or ANY)
        except ValueError as exc:
            roles = ", ".join(r.value for r in Role)
            raise ValueError(f"invalid grant {text!r} (role@plant/product, roles: {roles}): {exc}") from exc


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `subject` is stable (user id / service account id), `name` is for display."""

    subject: str
    name: str
    kind: Literal["user", "service"]
    grants: tuple[Grant, ...] = field(default_factory=tuple)

    def has(self, role: Role, plant: str | None = None, product: str | None = None) -> bool:
        return any(g.role == role and g.covers(plant, product) for g in self.grants)

    def roles_at(self, plant: str | None = None, product: str | None = None) -> frozenset[Role]:
        return frozenset(g.role for g in self.grants if g.covers(plant, product))
