"""Who is calling, as proven by a verified token."""

from __future__ import annotations

from dataclasses import dataclass, field

INTERNAL_ADMIN = "internal_admin"


@dataclass(frozen=True)
class Principal:
    issuer: str
    subject: str
    # Role names found in the token's configured roles claim.
    token_roles: frozenset[str] = field(default_factory=frozenset)
    email: str | None = None
    # True only when the token's `email_verified` claim is the JSON boolean true.
    email_verified: bool = False
    name: str | None = None

    @property
    def is_internal_admin(self) -> bool:
        """Vendor staff: the role comes only from the IdP, never from a tenant's own records."""
        return INTERNAL_ADMIN in self.token_roles
