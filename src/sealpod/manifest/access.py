"""Who may do what, according to a manifest's ``users`` and ``roles``.

The coordinator asks these questions after it has authenticated a user by key; the answers
depend only on the manifest, so they are pure functions of it.
"""

from __future__ import annotations

from sealpod.manifest.models import ACTIONS_BY_RESOURCE, Manifest

__all__ = ["manifest_updaters", "user_is_allowed"]


def user_is_allowed(
    manifest: Manifest, user: str, resource: str, action: str, name: str | None = None
) -> bool:
    """Whether ``user`` holds a role granting ``action`` on ``resource`` (item ``name``).

    ``name`` is the secret, package or volume acted on; it is ignored for the ``manifest``
    resource and required for the others (no name means no permission). An unknown user,
    resource or action is simply not allowed.
    """
    spec = manifest.users.get(user)
    if spec is None or action not in ACTIONS_BY_RESOURCE.get(resource, frozenset()):
        return False
    for role_name in spec.roles:
        role = manifest.roles.get(role_name)
        if role is None or role.resource != resource or action not in role.actions:
            continue
        if resource == "manifest" or (name is not None and name in role.names):
            return True
    return False


def manifest_updaters(manifest: Manifest) -> list[str]:
    """The users holding a role with ``update`` on the manifest (the N of "M of N")."""
    return [
        name for name in manifest.users if user_is_allowed(manifest, name, "manifest", "update")
    ]
