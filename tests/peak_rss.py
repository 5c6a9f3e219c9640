"""Peak resident memory of a call, from the kernel's own counters (Linux /proc): the peak is reset to the
resident size first (clear_refs 5: VmHWM := VmRSS), so VmHWM after the call minus VmRSS before it is what
the call needed on top of what the process already held."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

AVAILABLE = Path("/proc/self/clear_refs").exists()


def status_kb(field: str) -> int:
    """A '<field>: N kB' value of /proc/self/status (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_growth(run: Callable[[], Any]) -> tuple[int, Any]:
    """(bytes the resident set rose to above its size before run(), run's result)."""
    resident = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    out = run()
    return (status_kb("VmHWM") - resident) * 1024, out
