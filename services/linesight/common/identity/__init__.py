"""Identity, roles and authorization shared by every service.

One service (labeling) issues tokens from its user store and OIDC login; every service verifies
them statelessly with the issuer's public key and checks its own deny-by-default Policy.
"""

from linesight.common.identity.model import ANY, Forbidden, Grant, Principal, Role, Unauthenticated
from linesight.common.identity.policy import Policy

__all__ = ["ANY", "Forbidden", "Grant", "Policy", "Principal", "Role", "Unauthenticated"]
