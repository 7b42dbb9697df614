"""The runtime: the shield filesystem (FUSE) and the bubblewrap sandbox an application runs in.

* :class:`Shield` / :class:`ShieldPolicy`: the sandbox's root filesystem, serving an unpacked
  rootfs under the enclave policy (trusted files checked against their hashes, allowed files
  passed through, tmpfs and secrets in memory, volumes through :class:`VolumeProvider`).
* :class:`Sandbox`: runs an unmodified program in bubblewrap namespaces with the shield as ``/``.

Importing this package does not load the shield; its names load it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sealpod.runtime.policy import ShieldPolicy
from sealpod.runtime.sandbox import Bind, Sandbox, SandboxUser
from sealpod.runtime.volumes import InMemoryVolume, VolumeProvider, VolumeStat

if TYPE_CHECKING:
    from sealpod.runtime.shield import Shield, is_mounted, run_shielded

__all__ = [
    "Bind",
    "InMemoryVolume",
    "Sandbox",
    "SandboxUser",
    "Shield",
    "ShieldPolicy",
    "VolumeProvider",
    "VolumeStat",
    "is_mounted",
    "run_shielded",
]

_SHIELD_NAMES = frozenset({"Shield", "is_mounted", "run_shielded"})


def __getattr__(name: str) -> Any:
    if name in _SHIELD_NAMES:
        from sealpod.runtime import shield

        return getattr(shield, name)
    raise AttributeError(name)
