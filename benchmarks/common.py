"""Helpers the benchmark scripts share."""

from __future__ import annotations


def vm(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; NaN if absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return float(line.split()[1]) / 1024
    return float("nan")
