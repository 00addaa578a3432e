"""guarded-ws: a WebSocket edge server that authenticates every connection before the app sees it."""

from importlib.metadata import PackageNotFoundError, version

from .session import ConnectionClosed, Session

try:
    __version__ = version("guarded-ws")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["ConnectionClosed", "Session", "__version__"]
