"""What each role may do. Views and the API ask ``can(role, action)``; nothing else
encodes role rules."""

from portal.models import Role

# Actions are "<area>.<verb>". Later capabilities add their own areas here.
_MEMBER = {
    "keys.create",
    "deployments.view",
    "deployments.manage",
    "playground.use",
    "builds.view",
    "builds.manage",
    "usage.view",
    "members.view",
    "lab.view",
    "lab.manage",
}
_BILLING = {"usage.view", "billing.view", "billing.manage", "members.view", "keys.create"}
_ADMIN = _MEMBER | _BILLING | {"members.manage", "keys.manage"}
_OWNER = _ADMIN | {"owners.manage", "organization.manage"}

PERMISSIONS: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset(_OWNER),
    Role.ADMIN: frozenset(_ADMIN),
    Role.MEMBER: frozenset(_MEMBER),
    Role.BILLING: frozenset(_BILLING),
}


def can(role: str | None, action: str) -> bool:
    return role is not None and action in PERMISSIONS.get(role, frozenset())
