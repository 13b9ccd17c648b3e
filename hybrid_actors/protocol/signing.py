"""Pure HMAC-SHA256 signing for the Bybit v5 private WebSocket and REST API.

WebSocket auth (BYBIT_V5.md §2)::

    signature = hex(HMAC_SHA256(secret, "GET/realtime" + str(expires_ms)))

REST (§8)::

    signature = hex(HMAC_SHA256(secret, timestamp + api_key + recv_window + payload))

where ``payload`` is the exact query string sent (GET, without ``?``) or the raw JSON
body (POST). Callers must sign byte-for-byte what goes on the wire.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["ws_auth_payload", "ws_auth_signature", "rest_sign_payload", "rest_signature",
           "constant_time_equals"]


def ws_auth_payload(expires_ms: int) -> str:
    """The string the private WebSocket auth signs."""
    return f"GET/realtime{int(expires_ms)}"


def ws_auth_signature(api_secret: str, expires_ms: int) -> str:
    """Lower-case hex HMAC-SHA256 of ``GET/realtime{expires_ms}``."""
    return hmac.new(api_secret.encode(), ws_auth_payload(expires_ms).encode(), hashlib.sha256).hexdigest()


def rest_sign_payload(timestamp_ms: int, api_key: str, recv_window_ms: int, payload: str) -> str:
    """The string a REST request signs: ``timestamp + api_key + recv_window + payload``."""
    return f"{int(timestamp_ms)}{api_key}{int(recv_window_ms)}{payload}"


def rest_signature(api_secret: str, timestamp_ms: int, api_key: str, recv_window_ms: int,
                   payload: str) -> str:
    """Lower-case hex HMAC-SHA256 of :func:`rest_sign_payload`."""
    message = rest_sign_payload(timestamp_ms, api_key, recv_window_ms, payload)
    return hmac.new(api_secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def constant_time_equals(a: str, b: str) -> bool:
    """Compare signatures without leaking timing (used by the simulator's verifier)."""
    return hmac.compare_digest(a.encode(), b.encode())
