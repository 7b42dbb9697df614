"""Settings of a coordinator (pydantic, so the CLI and tests build them the same way)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CoordinatorSettings", "default_state_url"]


def default_state_url() -> str:
    """``sqlite:///<user data dir>/coordinator/state.db``."""
    directory = Path(platformdirs.user_data_dir("sealpod")) / "coordinator"
    return f"sqlite:///{directory / 'state.db'}"


class CoordinatorSettings(BaseModel):
    """How a coordinator runs. Time comes from ``clock`` (epoch seconds) so tests pin it."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    state_url: str = Field(
        default_factory=default_state_url,
        description="sqlite:///PATH (default) or postgresql://...",
    )
    tee: Literal["simulation", "gramine"] = "simulation"
    sim_dir: Path | None = Field(
        default=None, description="simulated platform directory (default: sealpod's data dir)"
    )
    gramine_root: Path = Path("/dev/attestation")
    nonce_ttl: float = Field(default=120.0, gt=0, le=3600, description="seconds")
    leaf_validity_days: int = Field(default=30, ge=1, le=3650)
    name: str = Field(default="sealpod coordinator", min_length=1, max_length=48)
    simulated_root_der: bytes | None = Field(
        default=None,
        repr=False,
        description="simulated SGX root accepted for service evidence (default: the simulated "
        "platform's root when tee is simulation)",
    )
    pccs_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="PCCS (PCS API v4) for collateral a service does not send, and for the "
        "coordinator's own quote on hardware",
    )
    pccs_ca_file: Path | None = Field(
        default=None, description="CA bundle to verify PCCS TLS with (default: system CAs)"
    )
    pccs_cache_dir: Path | None = Field(default=None, description="on-disk PCCS response cache")
    clock: Callable[[], float] = Field(default=time.time, exclude=True, repr=False)
