"""hybrid_actors: live Bybit v5 positions for a trading bot.

The private ``position`` stream (plus a REST snapshot after every connect) gives the
position lifecycle; public ``tickers.{symbol}`` streams give the mark price; supervised
trio actors combine them into one event stream of ``position.update`` /
``position.closed``::

    async with hybrid_actors.open_hybrid_stream(config) as stream:
        async for event in stream:
            ...
"""

from typing import TYPE_CHECKING

from .config import Credentials as Credentials
from .config import Endpoints as Endpoints
from .config import RestartPolicy as RestartPolicy
from .config import StreamConfig as StreamConfig
from .config import SubscriptionPolicy as SubscriptionPolicy
from .errors import AuthRejected as AuthRejected
from .errors import ConfigError as ConfigError
from .errors import HybridActorsError as HybridActorsError
from .errors import RestartIntensityExceeded as RestartIntensityExceeded
from .errors import TransportError as TransportError
from .health import HealthReport as HealthReport
from .notices import Notice as Notice
from .notices import StreamAlert as StreamAlert
from .notices import StreamEvent as StreamEvent
from .notices import StreamReturn as StreamReturn
from .notices import StreamRollback as StreamRollback
from .notices import StreamState as StreamState
from .state import PositionClosed as PositionClosed
from .state import PositionUpdate as PositionUpdate

if TYPE_CHECKING:  # what __getattr__ loads lazily at runtime, as type checkers must see it
    from .bridge import BybitHybridStream as BybitHybridStream
    from .bridge import EventHandler as EventHandler
    from .supervisor import HybridStream as HybridStream
    from .supervisor import open_hybrid_stream as open_hybrid_stream

__version__ = "0.1.0"

# The runtime (trio, trio-websocket, httpx) loads on first use, so that importing the
# pure layers (``hybrid_actors.protocol``, ``hybrid_actors.state``) stays free of it.
_LAZY = {"HybridStream": "supervisor", "open_hybrid_stream": "supervisor", "BybitHybridStream": "bridge",
         "EventHandler": "bridge"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hybrid_actors' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)

__all__ = [
    "AuthRejected", "BybitHybridStream", "ConfigError", "Credentials", "Endpoints", "EventHandler", "HealthReport",
    "HybridActorsError", "HybridStream", "Notice", "PositionClosed", "PositionUpdate", "RestartIntensityExceeded",
    "RestartPolicy", "StreamAlert", "StreamConfig", "StreamEvent", "StreamReturn", "StreamRollback", "StreamState",
    "SubscriptionPolicy", "TransportError", "open_hybrid_stream", "__version__",
]
