"""What each role may do, as data, checked in one place (:func:`refusal`).

As in Lago's per-role permission files: a route never tests ``role == "admin"``; the billing
audience's dependency asks whether the principal holds the permission the request needs. The
product's rule (console.md, "Who may see what"): Billing is for the account's own admins only,
so an admin of a shared account (a user from another workspace) holds nothing here.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from console.auth import Principal

__all__ = ["BILLING_MANAGE", "BILLING_VIEW", "ROLE_PERMISSIONS", "SHARED_USER_PERMISSIONS", "permissions", "refusal"]

BILLING_VIEW: Final = "billing:view"  # read the Billing section: usage, plans, orders, invoices, exports
BILLING_MANAGE: Final = "billing:manage"  # act in it: change plans, add funds, request extensions

ROLE_PERMISSIONS: Final = MappingProxyType(
    {
        "admin": frozenset({BILLING_VIEW, BILLING_MANAGE}),
        "member": frozenset[str](),
    }
)
#: A shared-account user holds none of the account's billing permissions, whatever the role.
SHARED_USER_PERMISSIONS: Final = frozenset[str]()


def permissions(principal: Principal) -> frozenset[str]:
    if principal.shared:
        return SHARED_USER_PERMISSIONS
    return ROLE_PERMISSIONS.get(principal.role, frozenset())


def refusal(principal: Principal, needed: str) -> tuple[str, str] | None:
    """None when allowed; else ``(reason code, message)`` for the 403 body."""
    if needed in permissions(principal):
        return None
    if principal.shared:
        return (
            "shared_user",
            "Billing is for the account's own admins: a user from another workspace, to whom this account's apps "
            "were shared, cannot see it",
        )
    return ("not_admin", f"Billing is for the account's admins only (your role is {principal.role!r})")
