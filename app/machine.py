"""What this process runs on: package versions, Python, host and CPU (standard library only).

Shared by the worker (worker.provenance) and the notebook callback (sweeplab.callback), so both
describe a machine alike. Nothing here imports TensorFlow or Keras: a version is read from the
module when the process already imported it, else from the installed package's metadata. A probe
that fails answers UNKNOWN, never raises.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import platform
import socket
import sys
from collections.abc import Callable

log = logging.getLogger("sweeplab")

UNKNOWN = "unknown"
NOT_INSTALLED = "not installed"
# The packages whose versions are recorded: the module name, then the distributions that provide it.
PACKAGES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-macos",
                   "tf-nightly", "tf-nightly-cpu"),
    "keras": ("keras",),
    "numpy": ("numpy",),
}


def safely(probe: Callable[[], str]) -> str:
    """PROBE's answer, or UNKNOWN if it raises."""
    try:
        return probe()
    except Exception as exc:  # describing the machine must never fail the work
        log.debug("probe %s failed: %s", getattr(probe, "__name__", probe), exc)
        return UNKNOWN


def package_version(module: str) -> str:
    """The version of MODULE as loaded in this process, else as installed, else NOT_INSTALLED."""
    version = getattr(sys.modules.get(module), "__version__", None)
    if isinstance(version, str):
        return version
    for dist in PACKAGES.get(module, (module,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def cpu_model() -> str:
    """/proc/cpuinfo's first "model name", else platform.processor(), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


@functools.cache
def _facts(loaded: frozenset[str]) -> dict[str, str]:
    return {
        "sweeplab": safely(functools.partial(package_version, "sweeplab")),
        "python": platform.python_version(),
        **{name: safely(functools.partial(package_version, name)) for name in PACKAGES},
        "host": safely(socket.gethostname),
        "cpu": safely(cpu_model),
    }


def machine_facts() -> dict[str, str]:
    """sweeplab, python, tensorflow, keras and numpy versions, host and cpu: gathered once per
    process (again once it imports one of PACKAGES, whose loaded version may differ). A copy."""
    return dict(_facts(frozenset(m for m in PACKAGES if m in sys.modules)))
