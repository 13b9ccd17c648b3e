"""The exception tree of hybrid_actors.

Every error we raise says what went wrong, on which thing, and what to do next.
Foreign errors (trio-websocket, httpx, OSError) are translated at the boundary
that owns the foreign library (``transport``, ``rest``) with ``raise ... from exc``.

::

    HybridActorsError
    ├── ConfigError                      bad flag / config value (our user's fault)
    ├── ProtocolError
    │   ├── LocalProtocolError           we misused the protocol (a bug of ours)
    │   └── RemoteProtocolError          the peer sent something we cannot use
    ├── TransportError                   an outage: retried forever with backoff
    │   ├── HandshakeError               could not open the WebSocket
    │   │   └── TlsVerificationError     the server's certificate was rejected (issuer, host name)
    │   ├── ConnectionLost               the socket closed / reset / oversized frame
    │   ├── HeartbeatTimeout             no pong in time (half-open socket)
    │   └── RestUnavailable              REST unreachable / 5xx / timeouts / rate limit
    ├── AuthRejected                     credentials refused: fatal, ends the stream
    │   └── RestAuthError                REST said 10003/10004/10005/10010
    ├── StartTimeout                     (also TimeoutError) the stream did not come up in time
    ├── SubscribeRejected                an error ack for a topic (reported, retried)
    ├── RestError                        REST answered retCode != 0
    │   ├── RestAuthError  (also AuthRejected)
    │   ├── RestClockSkew                10002: resync the clock and retry
    │   ├── RestRateLimited              10006 / 10018: wait and retry
    │   └── RestUnavailable (also TransportError)
    └── SupervisorError                  the stream ended
        └── RestartIntensityExceeded     an actor crashed too often: a bug, not an outage

No message in this module ever contains an API secret or a signature; the API key
appears only as its first four characters.
"""

from __future__ import annotations

from typing import Any


class HybridActorsError(Exception):
    """Base class of every error hybrid_actors raises."""


class ConfigError(HybridActorsError, ValueError):
    """A configuration value or command-line flag is invalid."""


class ProtocolError(HybridActorsError):
    """A frame violates the Bybit v5 protocol as we know it."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The exchange sent something we cannot use."""


class TransportError(HybridActorsError):
    """A connection-level failure. Expected in production; retried with backoff.

    ``retry_after`` (seconds), when set, is the least the exchange asked us to wait (an IP
    ban, a connection-rate limit); the supervisor's backoff never goes below it.
    """

    retry_after: float | None = None


class HandshakeError(TransportError):
    """The WebSocket could not be opened (refused, HTTP error, TLS, timeout)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TlsVerificationError(HandshakeError):
    """The server's TLS certificate was rejected: an unknown issuer (a proxy intercepting
    TLS, a missing CA bundle), a host name it does not cover, or an expired certificate.
    Not the exchange being down: shown as a TLS problem in ``health()``, and still retried
    with the capped backoff (a CA bundle or proxy may be fixed while we run)."""


class ConnectionLost(TransportError):
    """An open WebSocket closed, was reset, or sent a frame we refuse."""

    def __init__(self, message: str, *, code: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason


class HeartbeatTimeout(TransportError):
    """No pong came back in time: the socket is treated as dead (half-open)."""


class AuthRejected(HybridActorsError):
    """The exchange rejected our credentials. Fatal: retrying cannot help."""

    def __init__(self, message: str, *, key_hint: str = "", ret_msg: str = ""):
        super().__init__(message)
        self.key_hint = key_hint
        self.ret_msg = ret_msg


class StartTimeout(HybridActorsError, TimeoutError):
    """The stream did not come up (sockets open, snapshot applied) within the start deadline."""


class SubscribeRejected(HybridActorsError):
    """The exchange answered a subscribe/unsubscribe with ``success: false``."""

    def __init__(self, topic: str | None, ret_msg: str):
        super().__init__(f"subscription to {topic or '<unnamed topic>'} rejected: {ret_msg}")
        self.topic = topic
        self.ret_msg = ret_msg


class RestError(HybridActorsError):
    """A REST call failed with ``retCode != 0`` (or an unusable HTTP answer)."""

    def __init__(self, message: str, *, ret_code: int | None = None, ret_msg: str = "",
                 path: str = "", http_status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.ret_code = ret_code
        self.ret_msg = ret_msg
        self.path = path
        self.http_status = http_status
        self.retry_after = retry_after


class RestClockSkew(RestError):
    """retCode 10002: our timestamp is outside the server's recv_window."""


class RestRateLimited(RestError):
    """retCode 10006 / 10018 (or HTTP 403 'access too frequent')."""


class RestUnavailable(RestError, TransportError):
    """REST could not be reached, answered 5xx, hung past the deadline, or kept refusing."""


class RestAuthError(RestError, AuthRejected):
    """retCode 10003 / 10004 / 10005 / 10010: the key, signature or permissions are wrong."""

    def __init__(self, message: str, **kwargs: Any):
        RestError.__init__(self, message, **kwargs)
        self.key_hint = ""


class SupervisorError(HybridActorsError):
    """The supervised stream has ended."""


class RestartIntensityExceeded(SupervisorError):
    """An actor failed ``max_restarts`` times within ``window`` seconds (a crash loop)."""

    def __init__(self, actor: str, max_restarts: int, window: float, last_error: BaseException | None):
        detail = f"{type(last_error).__name__}: {last_error}" if last_error is not None else "unknown"
        super().__init__(
            f"actor {actor!r} crashed {max_restarts} times within {window:g}s; giving up "
            f"(last error: {detail}). This is a bug or a persistent misconfiguration, not an "
            f"exchange outage; see the log above for the tracebacks."
        )
        self.actor = actor
        self.max_restarts = max_restarts
        self.window = window
        self.last_error = last_error
