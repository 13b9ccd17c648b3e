"""TLS for the lean transport: every record one read brought, decrypted at once.

``trio.SSLStream`` returns at most one TLS record per ``receive_some()`` (OpenSSL's
``SSL_read`` stops at a record boundary), and the exchange writes each WebSocket frame in a
record of its own. Over ``wss://`` the public sockets would then hand down one frame per
call, with a scheduler pass each: the one-read-one-batch shape of ``lean_transport.py`` is
lost exactly where it matters. :class:`TlsStream` keeps it: one read of the TCP socket, every
complete record in it decrypted in one go.

The TLS protocol is the standard library's sans-IO core (:meth:`ssl.SSLContext.wrap_bio`:
an :class:`ssl.SSLObject` between two :class:`ssl.MemoryBIO`), public API only: handshake,
certificate and hostname verification (the context's), record layer, alerts. What is left
to us is moving bytes between the BIOs and the TCP stream:

- ``receive_some()`` is cancel-safe and a checkpoint: it takes nothing before its
  cancellation point, and plaintext it has taken is always returned;
- writes go out in the order the TLS layer produced them (one lock over the TCP writes; the
  bytes a read makes the TLS layer answer, such as a TLS 1.3 key update, go out too);
- a TCP end without ``close_notify`` is an end of stream, as in ``trio.SSLStream``'s
  ``https_compatible`` mode (servers routinely skip it); a corrupt record is
  ``trio.BrokenResourceError`` from the ``ssl.SSLError``.
"""

from __future__ import annotations

import ssl
from typing import Final

import trio

__all__ = ["TlsStream"]

#: plaintext returned by one ``receive_some()`` when the caller names no size
DEFAULT_RECEIVE: Final = 64 * 1024


class TlsStream(trio.abc.Stream):
    """A TLS client over ``transport_stream``; call :meth:`do_handshake` before use."""

    def __init__(self, transport_stream: trio.abc.Stream, context: ssl.SSLContext, server_hostname: str) -> None:
        self.transport_stream = transport_stream
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=False,
                                     server_hostname=server_hostname)
        self._write_lock = trio.StrictFIFOLock()
        self._eof = False  # the peer's close_notify, or the end of TCP, was read
        #: plaintext taken from the TLS layer whose hand-over a cancel interrupted
        self._held = b""

    # --- the handshake --------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the TLS handshake; a rejected certificate raises ``trio.BrokenResourceError``
        from the :class:`ssl.SSLCertVerificationError` (as ``trio.SSLStream`` does)."""
        try:
            while not self._handshake_step_done():
                await self._send_pending()
                data = await self.transport_stream.receive_some(DEFAULT_RECEIVE)
                if not data:
                    raise trio.BrokenResourceError("the peer closed the connection during the TLS handshake")
                self._incoming.write(data)
        except ssl.SSLError as exc:  # a rejected certificate, a protocol or cipher mismatch
            await self._send_pending_quietly()  # the alert that says why, if we can
            raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
        await self._send_pending()

    def _handshake_step_done(self) -> bool:
        """One step of the handshake: True once it is complete, False while it needs the peer."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    # --- receiving ------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = DEFAULT_RECEIVE if max_bytes is None else max_bytes
        if limit < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._held:  # an earlier call was cancelled while the TLS layer's answer went out
            plain, self._held = self._held, b""
            await trio.lowlevel.cancel_shielded_checkpoint()
            return plain
        plain = self._decrypt(limit)  # records an earlier read already brought
        if plain or self._eof:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return plain
        while True:
            data = await self.transport_stream.receive_some(DEFAULT_RECEIVE)  # cancel-safe: nothing taken yet
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
            plain = self._decrypt(limit)
            if not data and not plain:
                self._eof = True
            if self._outgoing.pending:  # the TLS layer answered something it read (a key update)
                self._held = plain  # a cancel here keeps it for the next call
                await self._send_pending()
                self._held = b""
            if plain or self._eof:
                return plain

    def _decrypt(self, limit: int) -> bytes:
        """Every complete record's plaintext, up to ``limit`` bytes (the rest stays for the
        next call); empty when a record is still incomplete or the stream ended."""
        parts: list[bytes] = []
        size = 0
        while size < limit and not self._eof:
            before = self._incoming.pending
            try:
                chunk = self._tls.read(limit - size)
            except ssl.SSLWantReadError:
                # Either only part of a record is left, or the TLS layer consumed a record that
                # carried no data (a TLS 1.3 session ticket, a key update) and stopped there:
                # go on while it still takes bytes from what we gave it.
                if self._incoming.pending and self._incoming.pending != before:
                    continue
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True  # close_notify, or TCP ended without one (https-compatible)
                break
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            if not chunk:
                self._eof = True
                break
            parts.append(chunk)
            size += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # --- sending ----------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
        await self._send_pending()

    async def _send_pending(self) -> None:
        """Write what the TLS layer produced, in order, under one lock."""
        async with self._write_lock:
            if self._outgoing.pending:
                await self.transport_stream.send_all(self._outgoing.read())

    async def _send_pending_quietly(self) -> None:
        try:
            await self._send_pending()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the handshake's own error is the one to report

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    # --- closing ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close TCP. No ``close_notify`` is sent: the WebSocket close handshake has already
        ended the conversation, and nothing of ours rides on the TLS close."""
        await self.transport_stream.aclose()
