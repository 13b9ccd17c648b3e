"""A bot run as a child process by test_bridge_hosts: one stream on one kind of host,
against the simulator whose details come as JSON in argv[2]. It prints one JSON line
with what happened.

Scenarios (argv[1] = "<host>:<scenario>"):

- ``sigint``: once events flow the bot sends itself SIGINT (``os.kill``), as Ctrl-C would.
  The host must see ``KeyboardInterrupt`` (trio_asyncio.run: in an exception group, as
  trio's nurseries report it); the bot then ends the way such bots do on that
  host (``run_until_complete``: ``loop.run_until_complete(stream.stop())``; ``run_forever``:
  just ``loop.close()``; ``asyncio.run`` / ``trio_asyncio.run``: nothing) and reports.

Hosts: ``run_until_complete``, ``run_forever`` (a stock selector loop), ``asyncio.run``,
``trio-asyncio`` (``trio_asyncio.run``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import threading
from typing import Any

import trio

from hybrid_actors import BybitHybridStream


def sockets() -> set[str]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:"):
            out.add(f"{name}:{target}")
    return out


def main() -> None:
    host, scenario = sys.argv[1].split(":")
    sim = json.loads(sys.argv[2])
    assert scenario == "sigint", scenario
    report: dict[str, Any] = {"host": host}
    events: list[str] = []
    streams: list[BybitHybridStream] = []
    first_event: list[asyncio.Future[None]] = []

    def handler(name: str, data: dict[str, Any]) -> None:  # a plain def handler
        events.append(name)
        if first_event and not first_event[0].done():
            first_event[0].set_result(None)

    bot_tasks: list[asyncio.Task[Any]] = []

    async def bot() -> None:
        bot_tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        first_event.append(asyncio.get_running_loop().create_future())
        stream = BybitHybridStream(sim["api_key"], sim["api_secret"], handler, stream_url=sim["ws_url"],
                                   rest_url=sim["rest_url"], start_timeout=20)
        streams.append(stream)
        await stream.start()
        report["host_kind"] = stream.host
        await asyncio.wait_for(first_event[0], 20)
        # Ctrl-C: from another thread, so that it lands wherever the main thread happens to be
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
        await asyncio.sleep(30)  # the bot carries on... until the interrupt arrives
        report["not_interrupted"] = True

    before = sockets()
    if host in ("run_until_complete", "run_forever"):
        loop = asyncio.SelectorEventLoop()
        asyncio.set_event_loop(loop)
        try:
            if host == "run_until_complete":
                loop.run_until_complete(bot())
            else:
                loop.create_task(bot())
                loop.run_forever()
        except KeyboardInterrupt:
            report["saw"] = "KeyboardInterrupt"
        report["state_after_interrupt"] = streams[0].state if streams else None
        if host == "run_until_complete":
            loop.run_until_complete(streams[0].stop())
            loop.run_until_complete(streams[0].wait_closed())
            report["wait_closed"] = True
        bot_tasks[0].cancel()  # the bot's own task, interrupted mid-way (not the stream's tasks)
        loop.run_until_complete(asyncio.gather(*bot_tasks, return_exceptions=True))
        loop.close()  # run_forever: without stop(); the loop's close tears the stream down
    else:
        try:
            if host == "asyncio.run":
                asyncio.run(bot())
            else:
                import trio_asyncio

                trio_asyncio.run(trio_asyncio.aio_as_trio(bot))
        except KeyboardInterrupt:
            report["saw"] = "KeyboardInterrupt"
        except BaseExceptionGroup as group:  # trio (under trio_asyncio.run) reports it from its nurseries
            rest = group.split(KeyboardInterrupt)[1]
            report["saw"] = "KeyboardInterrupt" if rest is None else repr(group)
    gc.collect()
    stream = streams[0]
    report.update(state=stream.state, error=repr(stream.error) if stream.error else None, events=len(events),
                  handler_errors=stream.handler_errors, sockets_left=sorted(sockets() - before),
                  sigint_handler_restored=signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    try:
        trio.run(trio.sleep, 0)
        report["trio_usable"] = True
    except BaseException as exc:  # noqa: BLE001 - reported
        report["trio_usable"] = repr(exc)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
