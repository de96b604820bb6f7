"""sweeplab: the command line, and the client for scripts and notebooks.

    from sweeplab import Client, SweeplabCallback

Both names load on first use, so `import sweeplab` stays light: httpx comes with `Client`, and
Keras/TensorFlow only with `SweeplabCallback`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeplab.callback import SweeplabCallback
    from sweeplab.client import Client, ClientError

__all__ = ["Client", "ClientError", "SweeplabCallback"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "ClientError"):
        from sweeplab import client

        return getattr(client, name)
    if name == "SweeplabCallback":
        from sweeplab.callback import SweeplabCallback

        return SweeplabCallback
    raise AttributeError(f"module 'sweeplab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
