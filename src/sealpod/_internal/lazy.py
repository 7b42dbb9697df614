"""PEP 562 lazy re-exports for package ``__init__`` modules.

A package lists ``name -> submodule`` and imports a submodule only when one of its names is first
used, so light users (the CLI, the runtime) do not pay for heavy dependencies (FastAPI, dcap-qvl)
they never touch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``name`` from ``package.<where[name]>`` on first use."""

    def module_getattr(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return module_getattr
