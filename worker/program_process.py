"""The process of a training program: why the worker stops it (StopReason), its death with the
worker (_parent_death_signal), signals to its process group (_signal_group, signal_name) and the
private folder of its channel's socket (_socket_folder). Re-exported by worker.programs."""

from __future__ import annotations

import ctypes
import enum
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable

from app.models import RunStatus

SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes


class StopReason(enum.StrEnum):
    """Why the worker stops a program's process (its output and log say so): a reason, not a run status."""

    LEASE_LOST = "lease lost"
    DATABASE_DOWN = "database unavailable"
    CANCELLED = RunStatus.CANCELLED.value  # cancel was asked: the run ends cancelled
    SHUTDOWN = "worker stopping"


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to SIGKILL the child when the worker thread that started it
    dies (PR_SET_PDEATHSIG), so a program never outlives a worker killed outright. libc and prctl
    are looked up here, before any fork: the child only makes the one call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the worker died before the call took effect
            os._exit(1)

    return die_with_parent


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _socket_folder() -> str:
    """A private folder for the channel's socket, with a path short enough for one."""
    folder = tempfile.mkdtemp(prefix="sweeplab-")
    if len(os.path.join(folder, "channel.sock")) > SOCKET_PATH_MAX:
        os.rmdir(folder)
        folder = tempfile.mkdtemp(prefix="sweeplab-", dir="/tmp")
    return folder
