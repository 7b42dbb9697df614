"""Prometheus metrics of the coordinator (text exposition format 0.0.4, written by hand: a few
counters and one histogram do not justify a dependency).

* ``sealpod_activations_total``: successful activations, by service;
* ``sealpod_activation_refusals_total``: refused activations, by reason;
* ``sealpod_activation_duration_seconds``: histogram of activation handling time (success and
  refusal alike);
* ``sealpod_manifest_refusals_total``: refused manifest requests, by reason.

Label values are service names and refusal reasons (stable snake_case), never secrets.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

__all__ = ["CONTENT_TYPE", "CoordinatorMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class CoordinatorMetrics:
    """Thread-safe counters and the activation latency histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._activations: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._manifest_refusals: Counter[str] = Counter()
        self._bucket_counts = [0] * len(_BUCKETS)
        self._count = 0
        self._sum = 0.0

    def activation(self, service: str, seconds: float) -> None:
        """Count a successful activation of ``service`` that took ``seconds``."""
        with self._lock:
            self._activations[service] += 1
            self._observe(seconds)

    def activation_refused(self, reason: str, seconds: float) -> None:
        """Count a refused activation."""
        with self._lock:
            self._refusals[reason] += 1
            self._observe(seconds)

    def manifest_refused(self, reason: str) -> None:
        """Count a refused manifest request."""
        with self._lock:
            self._manifest_refusals[reason] += 1

    def _observe(self, seconds: float) -> None:
        index = bisect.bisect_left(_BUCKETS, seconds)
        if index < len(_BUCKETS):
            self._bucket_counts[index] += 1
        self._count += 1
        self._sum += seconds

    def render(self) -> str:
        """The exposition text."""
        with self._lock:
            lines = [
                "# HELP sealpod_activations_total Successful service activations.",
                "# TYPE sealpod_activations_total counter",
            ]
            lines += [
                f'sealpod_activations_total{{service="{_label(k)}"}} {v}'
                for k, v in sorted(self._activations.items())
            ]
            lines += [
                "# HELP sealpod_activation_refusals_total Refused activations by reason.",
                "# TYPE sealpod_activation_refusals_total counter",
            ]
            lines += [
                f'sealpod_activation_refusals_total{{reason="{_label(k)}"}} {v}'
                for k, v in sorted(self._refusals.items())
            ]
            lines += [
                "# HELP sealpod_manifest_refusals_total Refused manifest requests by reason.",
                "# TYPE sealpod_manifest_refusals_total counter",
            ]
            lines += [
                f'sealpod_manifest_refusals_total{{reason="{_label(k)}"}} {v}'
                for k, v in sorted(self._manifest_refusals.items())
            ]
            lines += [
                "# HELP sealpod_activation_duration_seconds Time to handle an activation.",
                "# TYPE sealpod_activation_duration_seconds histogram",
            ]
            cumulative = 0
            for bound, count in zip(_BUCKETS, self._bucket_counts, strict=True):
                cumulative += count
                lines.append(
                    f'sealpod_activation_duration_seconds_bucket{{le="{_number(bound)}"}} '
                    f"{cumulative}"
                )
            lines.append(f'sealpod_activation_duration_seconds_bucket{{le="+Inf"}} {self._count}')
            lines.append(f"sealpod_activation_duration_seconds_sum {_number(self._sum)}")
            lines.append(f"sealpod_activation_duration_seconds_count {self._count}")
        return "\n".join(lines) + "\n"
