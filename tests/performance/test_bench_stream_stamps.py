"""scripts/bench_stream.py's per-frame arrival stamps: a read is taken in slices, each with the
kernel's receive stamp, and each message gets the stamp of the slice holding its LAST byte
(bench_support.ReadStamper, FrameEnds); GC pauses are matched to latency intervals.

The mapping is checked on synthetic WebSocket bytes with known slice boundaries (messages
spanning slices, several in one slice, a control frame between, a fragmented message whose
frames straddle two reads, a stream wrapped mid-frame); the sliced read on a real loopback
TCP socket."""

from __future__ import annotations

import gc
import pathlib
import sys

import pytest
import trio
import trio.testing

pytestmark = pytest.mark.performance

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from bench_support import FrameEnds, GcPauses, ReadStamper, burst_profile  # noqa: E402

TEXT, CONT, PING = 0x1, 0x0, 0x9


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A server's (unmasked) RFC 6455 frame."""
    n = len(payload)
    if n < 126:
        length = bytes([n])
    elif n < 1 << 16:
        length = bytes([126]) + n.to_bytes(2, "big")
    else:
        length = bytes([127]) + n.to_bytes(8, "big")
    return bytes([(0x80 if fin else 0) | opcode]) + length + payload


@pytest.fixture
def wire():
    """The bytes after the wrap, each message's end offset in them, and the messages in order."""
    old = frame(TEXT, b'{"old":"' + b"o" * 200 + b'"}')
    messages = [b"a" * 50, b"b" * 60, b"c" * 300, b"d" * 40, b"e" * 70_000]
    parts = [old[-20:]]  # the wrap came in the middle of a frame
    ends = []
    for index, payload in enumerate(messages):
        parts.append(frame(TEXT, payload))
        ends.append(sum(map(len, parts)))
        if index == 2:
            parts.append(frame(PING, b"ping"))  # a control frame completes no message
    fragmented = b"f" * 100 + b"g" * 100
    parts += [frame(TEXT, fragmented[:100], fin=False), frame(CONT, fragmented[100:])]
    ends.append(sum(map(len, parts)))
    return b"".join(parts), ends, [old[4:].decode()] + [m.decode() for m in messages] + [fragmented.decode()]


def cut(data: bytes, sizes: list[int], first_stamp: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Slices of ``sizes`` bytes: (end within ``data``, kernel stamp first_stamp, +1000, ...,
    recv returned 5 ns after); also (start, end) per slice."""
    slices, spans, at = [], [], 0
    for i, size in enumerate(sizes):
        slices.append((at + size, first_stamp + 1000 * i, first_stamp + 1000 * i + 5))
        spans.append((at, at + size))
        at += size
    assert at == len(data)
    return slices, spans


def flat(slices: list[tuple[int, int, int]]) -> list[int]:
    return [value for entry in slices for value in entry]


def test_each_message_gets_the_stamp_of_the_slice_holding_its_last_byte(wire):
    data, ends, messages = wire
    # read 1: the old frame's tail, 'a' and 'b' in one slice, then 'c' spread over two slices;
    # read 2: the ping, 'd', and 'e' (70 kB) over many slices, ending inside the fragmented message;
    # read 3: the rest of the fragmented message (its continuation frame)
    first_end = ends[2] + 10  # past 'c', inside the ping
    second_end = ends[4] + 50  # inside the first fragment
    reads = [data[:first_end], data[first_end:second_end], data[second_end:]]
    sizes = [[ends[1] + 3, 200, first_end - ends[1] - 203],
             [ends[3] - first_end - 5, 5] + [512] * 136 + [second_end - ends[3] - 136 * 512],
             [len(reads[2]) - 30, 30]]
    stamper = ReadStamper()
    expected, newest, numbers, offset = [], [], [], 0
    delivered = iter(messages)
    per_read = [2, 3, 1]  # messages the transport hands over after each read
    for number, (chunk, chunk_sizes) in enumerate(zip(reads, sizes)):
        slices, spans = cut(chunk, chunk_sizes, first_stamp=(number + 1) * 1_000_000)
        stamper.add_read(number * 10, chunk, flat(slices), number * 10 + 7)
        for end in ends:
            for (start, stop), (_end, kernel, done) in zip(spans, slices):
                if offset + start < end <= offset + stop:
                    expected.append((kernel, slices[-1][1], done, number * 10 + 7))
        offset += len(chunk)
        newest.append(slices[-1][1])
        numbers += [stamper.deliver(next(delivered)) for _ in range(per_read[number] + (number == 0))]
    assert numbers == list(range(7))
    got = stamper.resolve()

    assert got[0] is None  # the old message began before the wrap: not in the bytes read
    assert got[1:] == expected
    assert stamper.unstamped == 1 and stamper.stamped == 6 and stamper.length_mismatches == 0
    # hand-checked: 'a' and 'b' share read 1's first slice, 'c' ends in its third; 'd' in read
    # 2's second slice, 'e' in its last; the fragmented message in read 3's last slice
    assert [arrival[0] for arrival in got[1:]] == [1_000_000, 1_000_000, 1_002_000, 2_001_000, 2_138_000, 3_001_000]
    # the newest segment of each read, as the lower bound figure uses it
    assert [arrival[1] for arrival in got[1:]] == [newest[0]] * 3 + [newest[1]] * 2 + [newest[2]]
    # a mapping that used the read's newest stamp would give other stamps to these messages
    assert [arrival[0] for arrival in got[1:]] != [arrival[1] for arrival in got[1:]]
    # per read: messages completed (from the read after the boundary's), slices, waits
    assert stamper.read_frames == [None, 2, 1]
    assert stamper.read_slices == [3, 139, 2] and stamper.waits_ns == [None, 10 - 7, 20 - 17]
    assert stamper.read_called_ns == [0, 10, 20] and stamper.read_bytes == [len(r) for r in reads]


def test_the_cpu_used_between_two_reads_is_kept_per_read(wire):
    """A long wait between reads is attributed: the CPU this process used in it (the
    difference of its CPU clock at the previous read's return and this read's call); a read
    without CPU stamps has none."""
    data, _ends, _messages = wire
    stamper = ReadStamper()
    stamper.add_read(0, data[:100], [100, 0, 5], 5, cpu_called_ns=1_000, cpu_returned_ns=1_400)
    stamper.add_read(9_000_000, data[100:200], [100, 0, 9_000_005], 9_000_005, cpu_called_ns=1_700,
                     cpu_returned_ns=2_000)
    stamper.add_read(9_500_000, data[200:300], [100, 0, 9_500_005], 9_500_005)  # no CPU stamps
    stamper.add_read(9_600_000, data[300:400], [100, 0, 9_600_005], 9_600_005, cpu_called_ns=2_600,
                     cpu_returned_ns=2_700)
    stamper.resolve()
    assert stamper.waits_ns == [None, 9_000_000 - 5, 9_500_000 - 9_000_005, 9_600_000 - 9_500_005]
    assert stamper.cpu_waits_ns == [None, 1_700 - 1_400, None, None]


def test_messages_delivered_later_than_read_keep_their_own_slices(wire):
    """trio-websocket's reader task reads ahead of the consumer: the messages of several reads
    are handed over after all of them; each still maps to its own read and slice."""
    data, ends, messages = wire
    stamper = ReadStamper()
    cuts = [0, ends[0] + 1, ends[2] - 1, len(data)]
    for index, (start, stop) in enumerate(zip(cuts, cuts[1:])):
        stamper.add_read(index, data[start:stop], [stop - start, 100 + index, 200 + index], 300 + index)
    for message in messages:
        stamper.deliver(message)
    got = stamper.resolve()
    assert got[0] is None
    assert [arrival[0] for arrival in got[1:]] == [100, 101, 102, 102, 102, 102]
    assert [arrival[3] for arrival in got[1:]] == [300, 301, 302, 302, 302, 302]


def test_frame_ends_across_chunks_of_every_size():
    payloads = [b"x" * n for n in (0, 1, 125, 126, 127, 65_535, 65_536)]
    data = b"".join(frame(TEXT, p) for p in payloads) + frame(PING, b"") + frame(TEXT, b"yy", fin=False) \
        + frame(CONT, b"zzz")
    want, at = [], 0
    for p in payloads:
        at += len(frame(TEXT, p))
        want.append((at, len(p)))
    want.append((len(data), 5))
    for step in (1, 3, 512, len(data)):
        scanner = FrameEnds()
        found = [end for i in range(0, len(data), step) for end in scanner.feed(data[i:i + step])]
        assert found == want, step


def test_burst_profile_places_the_tail_in_its_burst():
    ms = 1_000_000
    # two bursts 100 ms apart, 10 events each over 9 ms; latency 1 ms, except the last two
    # events of the second burst (backlog: 5 ms each) and, unsorted, the first of the first (2 ms)
    intervals = []
    for start in (0, 100 * ms):
        for k in range(10):
            kernel = start + k * ms
            late = 5 * ms if start and k >= 8 else 2 * ms if not start and k == 0 else ms
            intervals.append((kernel, kernel + late))
    profile = burst_profile(list(reversed(intervals)))
    assert profile["bursts"] == 2
    assert profile["events_per_burst"]["p50"] == 10 and profile["arrival_span_ms"]["max"] == 9.0
    # 20 events: the p99 is the largest (5 ms), both in the last fifth of their burst
    assert profile["tail_events_by_part"] == [0, 0, 0, 0, 2]
    parts = profile["frame_to_event_ms_by_part"]
    assert [part["p99"] for part in parts] == [2.0, 1.0, 1.0, 1.0, 5.0]
    assert parts[0]["p50"] == 1.0
    # the p99 is compared unrounded: 5.0006 ms is the only event at or above it (rounded to
    # 5.001 ms it would have none; 5.0004 rounded to 5.0 would count both)
    for last in (5_000_600, 5_000_400):
        kernel = intervals[-1][0]
        skewed = [*intervals[:-1], (kernel, kernel + last)]
        assert burst_profile(skewed)["tail_events_by_part"] == [0, 0, 0, 0, 1]
    # a gap of exactly 20 ms does not split a burst; more does
    assert burst_profile([(0, ms), (20 * ms, 21 * ms)])["bursts"] == 1
    assert burst_profile([(0, ms), (20 * ms + 1, 21 * ms)])["bursts"] == 2
    assert burst_profile([])["bursts"] == 0


def test_gc_pauses_matched_to_latency_intervals():
    ms = 1_000_000
    pauses = GcPauses()
    pauses.pauses = [(1 * ms, 2 * ms, 0), (10 * ms, 15 * ms, 1), (50 * ms, 52 * ms, 0)]
    intervals = [(0, 1 * ms - 1), (1 * ms + 5, 1 * ms + 9), (2 * ms - 1, 9 * ms), (2 * ms + 1, 9 * ms),
                 (9 * ms, 10 * ms + 1), (15 * ms - 1, 90 * ms)]
    assert pauses.overlapping(intervals) == 4  # not the first (ends before), nor the fourth (between)
    summary = pauses.summary()
    assert (summary["count"], summary["total_ms"], summary["max_ms"]) == (3, 8.0, 5.0)
    assert summary["by_generation"] == {"0": {"count": 2, "total_ms": 3.0, "max_ms": 2.0},
                                        "1": {"count": 1, "total_ms": 5.0, "max_ms": 5.0}}


def test_the_stamper_keeps_no_object_the_garbage_collector_tracks_per_read(wire):
    """A container kept per read (or per frame) for the whole latency window made the collector
    run in the window (15 collections where the uninstrumented stream had 1), pauses that the
    figure then blamed on the stream."""
    data, _ends, messages = wire
    stamper = ReadStamper()
    stamper.add_read(0, data, [len(data), 1, 2], 3)  # the stamper's own storage exists from here
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for number in range(2_000):
            stamper.add_read(number, data, [100, number, number + 1, len(data), number + 2, number + 3], number + 4)
            stamper.deliver(messages[number % len(messages)])
        grown = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert grown < 20, f"{grown} tracked objects for 2,000 reads"
    got = stamper.resolve()  # and the reads are still all there
    assert len(stamper.read_bytes) == 2_001 and stamper.read_slices == [1] + [2] * 2_000
    assert len(got) == 2_000


@pytest.fixture
def bench():
    from tests.performance.test_bench_stream_smoke import load_script
    return load_script()


async def test_sliced_reads_on_a_loopback_socket_return_every_byte_with_a_stamp_per_slice(bench, loopback_clock):
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    client = await trio.testing.open_stream_to_socket_listener(listener)
    server = await listener.accept()
    payloads = [(f'{{"n":{i},"pad":"' + "p" * (200 + i) + '"}').encode() for i in range(40)]
    data = b"".join(frame(TEXT, p) for p in payloads)
    probe = bench.LatencyProbe()
    wrapped = bench._StampingStream(client, probe)  # receive stamps on
    for i in range(0, len(data), 700):
        await server.send_all(data[i:i + 700])
    received = b""
    while len(received) < len(data):
        received += await wrapped.receive_some(65536)
    assert received == data
    stamper = wrapped.stamper
    for payload in payloads:
        stamper.deliver(payload.decode())
    arrivals = stamper.resolve()
    assert None not in arrivals and stamper.length_mismatches == 0
    # Linux turns receive stamps on through a deferred work item when no socket had them on,
    # so the first segments may come unstamped: those slices are stamped with their recv's return
    assert sum(stamper.read_slices) > 1 and 0 <= stamper.kernel_stamped <= sum(stamper.read_slices)
    for kernel, newest, done, returned in arrivals:
        assert kernel <= newest <= returned and kernel <= done <= returned
    wrapped.release()  # the fd goes back to the connection, still open
    await server.send_all(b"after")
    assert await client.receive_some(100) == b"after"
    await server.aclose()
    await client.aclose()
    await listener.aclose()


def test_the_probe_keys_frames_by_objects_the_collector_does_not_track(bench):
    """The probe's per-frame tables outlive frames that end in no event (a mark unchanged or
    conflated); keyed by tuples, those entries alone made the collector run in every window."""
    key = bench._frame_key("BTCUSDT", 1_700_000_000_123)
    assert not gc.is_tracked(key)
    assert key != bench._frame_key("BTCUSDT", 1_700_000_000_124) != bench._frame_key("BTCUSDC", 1_700_000_000_123)
