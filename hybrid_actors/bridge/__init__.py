"""Embedding the stream in an asyncio program: :class:`BybitHybridStream`.

The one package of hybrid_actors that imports asyncio (and talks to trio-asyncio). A bot
keeps its asyncio code and its event router; only its start-up changes::

    stream = BybitHybridStream(api_key=key, api_secret=secret, event_handler=on_event)
    await stream.start()        # the private socket and every public one up, REST snapshot applied
    ...
    await stream.stop()         # graceful, idempotent

``on_event(event_name, data)`` (``async def``, or a plain ``def``: a result that is not
awaitable means done) is called with ``"position.update"`` / ``"position.closed"``
and the event's :meth:`~hybrid_actors.state.PositionEvent.as_dict` (Decimals kept), and
with the stream's notices (``"stream.state"`` and the others of :mod:`hybrid_actors.notices`)
and their ``as_dict()``; every ``data`` carries ``"event"`` too. Notices share one lane, so
they reach the handler in order.

Two hosts, chosen by :meth:`BybitHybridStream.start` from the running loop
--------------------------------------------------------------------------
- **trio-asyncio** (the program runs under ``trio_asyncio.run(...)``): the asyncio loop is
  itself driven by trio, so the supervised actors run as ordinary trio tasks of that run,
  started with ``loop.trio_as_future`` (trio-asyncio's documented trio-from-asyncio call).
- **trio guest mode** (a stock ``asyncio.run()`` loop): trio runs as a guest of the
  asyncio loop (``trio.lowlevel.start_guest_run``). trio's task steps run as asyncio
  callbacks on the loop's thread; one trio worker thread only waits for trio's I/O. Every
  stream on one loop shares one guest run (:class:`GuestRun`), which ends when the last
  stream's trio side has returned.

trio-asyncio is never imported here: importing it replaces asyncio's event-loop policy for
the whole process (``asyncio.run`` would then build trio-asyncio's sync loop), so we only
look for it in ``sys.modules``; a program running on a trio-asyncio loop has imported it.

Delivery and ordering
---------------------
The trio side (``_pump``) takes every event queued in the stream as one batch (at most
``MAX_BATCH``) and stamps it with ``perf_counter_ns``. It runs on the loop's thread (a
guest-mode trio step is an asyncio callback; trio-asyncio runs the loop inside trio), so it
queues the batch in the asyncio side's lanes directly and wakes the delivery task: one
loop wakeup per batch, never one per event (a loop callback costs ~4 µs on a stock loop,
~40 µs on trio-asyncio). Each position (``(category, symbol, position_idx)``) has a lane.
The delivery task runs each handler call's first step inline; a call that returns
without waiting costs no task. A call that waits keeps the task it started in (so
``asyncio.timeout`` and ``current_task()`` behave), that task owns the lane until the lane
is empty, and a new delivery task carries on with the other lanes. Hence: calls for one
position are never concurrent and never reordered; a slow handler for one position does
not hold up the others. Each call runs in a copy of the context ``start()`` was called in.

Bounded buffers, and the plan for full
--------------------------------------
- Price-only updates (``source == "ticker"``) conflate per lane: a lane queues at most one
  price update behind its last queued lifecycle event, and a newer price replaces it
  (latest wins, counted as ``bridge_conflated``). So the prices held for a slow handler are
  bounded by the number of positions, whatever the tick rate.
- Lifecycle events (open, resize, close, REST corrections) are never dropped or reordered.
  At most ``config.event_buffer`` of them wait in the lanes; at that point the trio side
  stops taking batches (backpressure) until half the room is free. The stream's own output
  queue then conflates prices and, once its lifecycle buffer is full too, makes the actors
  wait (see :class:`~hybrid_actors.actors.mailboxes.EventQueue`). A lane stuck on a
  handler that never returns therefore stalls everyone only after ``event_buffer``
  lifecycle events for it, and :meth:`BybitHybridStream.health` says so.
- Every hop carries at most ``MAX_BATCH`` events; delivery delays go into a fixed-bucket
  histogram (:class:`DelayHistogram`).

A handler that raises is logged with the event (which holds no credentials), counted
(``stream.handler_errors``, ``health().events["handler_errors"]``) and the stream goes on.

Shutdown
--------
:meth:`BybitHybridStream.stop` cancels the trio side's own cancel scope (through the trio
token, which wakes the run), waits for it to close its sockets and return, waits for the
guest run to finish if this was its last stream, then drops the events not yet handed to
the handler and gives handler calls in progress ``stop_timeout`` seconds before cancelling
them. ``state`` is ``stopping`` from the call until it returns. An error the trio side raises
while being stopped is logged with its traceback and kept as ``error`` (``stop()`` returns;
``wait_closed()`` raises it); a plain cancellation stays quiet. If the loop shuts down without ``stop()`` (``asyncio.run`` cancels every task), the
host task runs the same trio shutdown before it lets the cancellation through, and the
delivery task's cancellation closes the lanes (no handler error, no restart). If the loop
is closed without ``stop()``, the guest run's close hook runs ``stop()`` first (see
:class:`~.hosts.GuestRun`, which also keeps Ctrl-C with the host).

Modules: :mod:`.stream` (the public class, the trio side), :mod:`.lanes` (the delivery
lanes on the asyncio side), :mod:`.feed` (``events()`` iterators), :mod:`.hosts` (trio
guest mode, trio-asyncio; Ctrl-C and loop close), :mod:`.stalls` (a blocked loop),
:mod:`.stats` (delay histograms and counters). Everything logs to the
``hybrid_actors.bridge`` logger. The read-only views (``health()``, ``positions()``,
``state``) are safe from any thread.
"""

from __future__ import annotations

from .lanes import EventHandler as EventHandler
from .stats import BridgeStats as BridgeStats
from .stats import DelayHistogram as DelayHistogram
from .stream import MAX_BATCH as MAX_BATCH
from .stream import SUPPORTED_MODES as SUPPORTED_MODES
from .stream import BybitHybridStream as BybitHybridStream

__all__ = ["BybitHybridStream", "BridgeStats", "DelayHistogram", "EventHandler", "SUPPORTED_MODES", "MAX_BATCH"]
