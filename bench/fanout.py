"""How fast events of one session reach its WebSocket subscribers, side by side.

``python bench/fanout.py`` takes about six minutes; ``--quick`` about one.
``--choose`` measures the bare Starlette endpoint under every uvicorn
WebSocket implementation and event loop instead, and names the best. Beyond
the project's own dependencies it wants ``broadcaster``, ``uvloop``,
``httptools`` and ``wsproto``; whatever is missing is skipped and said so.

Each variant's server runs in its own process (``bench/_fanout_server.py``)
and every subscriber lives in this one, the client process: on two cores a
second client process would only take CPU from the server. For 1, 100 and
1000 subscribers of one session it measures:

* the delivery rate at saturation: a burst of events published as fast as the
  server's loop allows, deliveries counted until every subscriber has all;
* p50 and p99 latency from publish to receipt at a steady 5 events a second;
* the server's CPU time per 1000 deliveries at that steady rate, as the
  kernel's scheduler counts it for the server process;
* the server's memory per idle connection (RSS with N minus RSS with none).

The variants, all on 127.0.0.1 and without compression or pings: a bare
``websockets`` server with ``broadcast()`` (the limit); a Starlette endpoint
that only loops ``send_text`` under the same uvicorn (the floor of any
Starlette app); encode/broadcaster's memory backend behind Starlette (the
peer a user would pick instead); ``streamer.create_app()`` as ``streamer
serve`` runs it, on streamer's own uvicorn WebSocket protocol, which writes
the frames of a publish itself; and, as ``streamer-asgi``, the same app on
uvicorn's plain protocol, where publish drives each ASGI send, as when a host
application mounts it.

The machine is shared and noisy, so every server is up for the whole of a
subscriber count, each round measures every variant once in an order that
rotates, and ratios are taken between variants of the same round before the
median. The targets, for ``streamer`` at 1000 subscribers: at least 0.9 of the
bare Starlette endpoint's delivery rate and at most 1.15 times its CPU per
delivery, at least 1.5 times broadcaster's rate, a steady p99 within 1.3 of
the bare ``websockets`` server's, and memory per idle connection within 1.2 of
the bare Starlette endpoint's. The run reports; it exits 0 whatever it finds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, TypeVar

import psutil
from _fanout_client import Meter, connect_all
from _fanout_server import LOOPS, VARIANTS, WS_IMPLS, raise_fd_limit

_T = TypeVar("_T")

_SERVER = Path(__file__).with_name("_fanout_server.py")
_HOST = "127.0.0.1"

# Every wait is bounded by one of these, scaled from one constant.
_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0

# What --choose measured on the two-core machine (see --choose's output): the
# sans-I/O websockets protocol under uvloop led on rate, CPU and p99.
_DEFAULT_WS = "websockets-sansio"
_DEFAULT_LOOP = "uvloop"

# What each variant, WS implementation, loop and HTTP parser needs installed.
_NEEDS = {
    "streamer": "streamer.app",
    "streamer-asgi": "streamer.app",
    "broadcaster": "broadcaster",
    "wsproto": "wsproto",
    "uvloop": "uvloop",
    "httptools": "httptools",
}

# Fewer idle connections than this grow RSS by less than its page-sized noise.
_MEMORY_SUBSCRIBERS = 100

_REFERENCE = "starlette"
_CANDIDATE = "streamer"


@dataclass(frozen=True, slots=True)
class Settings:
    """How much to measure: rounds, burst size and the steady stream."""

    label: str
    rounds: int
    #: Deliveries a burst aims at, so that every subscriber count takes
    #: about as long; the events per burst are clamped to the bounds below.
    deliveries: int
    min_events: int
    max_events: int
    rate: float
    seconds: float

    def events(self, subscribers: int) -> int:
        wanted = self.deliveries // max(1, subscribers)
        return max(self.min_events, min(self.max_events, wanted))


FULL = Settings("full", 5, 60_000, 60, 12_000, rate=5.0, seconds=3.0)
QUICK = Settings("quick", 1, 40_000, 40, 5_000, rate=5.0, seconds=2.0)


@dataclass(frozen=True, slots=True)
class Target:
    """One server configuration: a variant, and for uvicorn its WS and loop."""

    variant: str
    ws: str
    loop: str
    http: str
    label: str

    def argv(self) -> list[str]:
        return [
            sys.executable,
            str(_SERVER),
            self.variant,
            f"--ws={self.ws}",
            f"--loop={self.loop}",
            f"--http={self.http}",
        ]


@dataclass(frozen=True, slots=True)
class Burst:
    rate: float
    received: int
    expected: int
    server_busy: float
    client_busy: float


@dataclass(frozen=True, slots=True)
class Steady:
    p50_ms: float
    p99_ms: float
    cpu_ms_per_1k: float
    received: int
    expected: int


@dataclass(slots=True)
class Record:
    """What was measured of one target at one subscriber count."""

    target: Target
    kib_per_connection: float = math.nan
    bursts: list[Burst | None] = field(default_factory=list)
    steadies: list[Steady | None] = field(default_factory=list)
    error: str | None = None


class ServerProcess:
    """A variant's server process, driven over its stdin and stdout."""

    def __init__(self, target: Target, logs: Path) -> None:
        self.target = target
        name = "".join(c if c.isalnum() or c in "-." else "_" for c in target.label)
        self._log_path = logs / f"{name}.log"
        self._log: IO[bytes] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self.psutil: psutil.Process | None = None
        self.port = 0
        self.path = "/"

    async def start(self) -> None:
        self._log = self._log_path.open("wb")
        self._process = await asyncio.create_subprocess_exec(
            *self.target.argv(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
        )
        self.psutil = psutil.Process(self._process.pid)
        reply = await self._read(_TIMEOUT)
        if reply[:1] != ["ready"]:
            raise RuntimeError(f"{self.target.label} did not start: {self.tail()}")
        self.port = int(reply[1])
        self.path = reply[2]

    async def command(self, line: str, within: float) -> list[str]:
        assert self._process is not None and self._process.stdin is not None
        async with asyncio.timeout(within):
            self._process.stdin.write(line.encode() + b"\n")
            await self._process.stdin.drain()
            reply = await self._read(within)
        if reply[:1] != ["ok"]:
            raise RuntimeError(f"{self.target.label}: {line!r} got {reply}")
        return reply

    def cpu(self) -> float:
        assert self._process is not None
        return cpu_seconds(self._process.pid)

    def rss(self) -> int:
        assert self.psutil is not None
        return self.psutil.memory_info().rss

    def tail(self) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-1500:].strip() or "(empty log)"

    async def stop(self) -> None:
        """Close stdin, which ends the server; kill it by PID if it lingers."""
        process = self._process
        if process is None:
            return

        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
        finally:
            if self._log is not None:
                self._log.close()

    async def _read(self, within: float) -> list[str]:
        assert self._process is not None and self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), within)
        if not line:
            raise RuntimeError(f"{self.target.label} exited: {self.tail()}")
        return line.decode().split()


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of a process, to the nanosecond where Linux tells.

    psutil counts clock ticks of 10 ms, coarser than what a steady phase at
    one subscriber costs; the scheduler's own count is in nanoseconds.
    """
    try:
        total = 0
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(os.path.join(task.path, "schedstat")) as stat:
                total += int(stat.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system


def _client_cpu() -> float:
    return cpu_seconds(os.getpid())


def _percentile(ordered: Sequence[int], fraction: float) -> float:
    # Nearest rank: with few samples, p99 is an observed value, the largest.
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[index]


async def _wait_phase(done: asyncio.Future[None], within: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(done), within)


async def measure_burst(server: ServerProcess, meter: Meter, events: int) -> Burst:
    """Publish ``events`` at once; the rate until the last subscriber has all."""
    connections = len(meter.connections)
    expected = events * connections
    timeout = max(_TIMEOUT, expected / 2_000)
    phase = meter.start(events, latencies=False)
    server_before, client_before = server.cpu(), _client_cpu()
    wall_before = time.perf_counter()
    try:
        reply = await server.command(f"burst {events}", timeout)
        await _wait_phase(phase.done, timeout)
    finally:
        meter.stop()
    wall = time.perf_counter() - wall_before

    # An unfinished burst is billed up to now, so its rate is a lower bound.
    end_ns = phase.last_ns if phase.done.done() else time.time_ns()
    elapsed = max(1, end_ns - int(reply[1])) / 1e9
    return Burst(
        rate=phase.received / elapsed,
        received=phase.received,
        expected=expected,
        server_busy=(server.cpu() - server_before) / wall,
        client_busy=(_client_cpu() - client_before) / wall,
    )


async def measure_steady(
    server: ServerProcess, meter: Meter, settings: Settings
) -> Steady:
    """Publish at the steady rate; latency, and server CPU per delivery."""
    events = max(1, round(settings.rate * settings.seconds))
    expected = events * len(meter.connections)
    phase = meter.start(events, latencies=True)
    server_before = server.cpu()
    try:
        await server.command(
            f"steady {settings.rate} {settings.seconds}", settings.seconds + _TIMEOUT
        )
        # A coalesced progress event never arrives; give the rest a moment.
        await _wait_phase(phase.done, _STOP_TIMEOUT)
    finally:
        meter.stop()
    cpu = server.cpu() - server_before

    latencies = sorted(phase.latencies or ())
    if not latencies:
        raise RuntimeError(f"{server.target.label}: no event arrived")
    return Steady(
        p50_ms=_percentile(latencies, 0.50) / 1e6,
        p99_ms=_percentile(latencies, 0.99) / 1e6,
        cpu_ms_per_1k=1e6 * cpu / len(latencies),
        received=len(latencies),
        expected=expected,
    )


async def _idle_growth(server: ServerProcess, meter: Meter, count: int) -> int:
    """How much ``count`` idle connections grow the server's RSS, in bytes."""
    # A connection opened and dropped first pays for whatever the server
    # sets up lazily on its first one.
    warm = Meter(_HOST, server.port, server.path)
    try:
        await connect_all(warm, 1, _TIMEOUT)
    finally:
        warm.close()
    await server.command("gc", _TIMEOUT)
    before = server.rss()

    await connect_all(meter, count, _TIMEOUT + count / 50)
    await server.command("gc", _TIMEOUT)
    return server.rss() - before


async def _guarded(record: Record, step: Callable[[], Awaitable[_T]]) -> _T | None:
    """Run one step of a target; a failure benches the target, not the run."""
    if record.error is not None:
        return None

    try:
        return await step()
    except Exception as exc:
        record.error = str(exc) or type(exc).__name__
        print(f"  {record.target.label}: {record.error}", flush=True)
        return None


def _rotated(count: int, round_: int) -> list[int]:
    shift = round_ % count
    return [*range(shift, count), *range(shift)]


async def measure(
    targets: Sequence[Target], subscribers: int, settings: Settings, logs: Path
) -> list[Record]:
    """Every target at one subscriber count, round by round."""
    servers = [ServerProcess(target, logs) for target in targets]
    records = [Record(target) for target in targets]
    meters: list[Meter] = []
    try:
        await asyncio.gather(
            *(_guarded(r, s.start) for s, r in zip(servers, records, strict=True))
        )

        # Connections are opened one server at a time, so that each server's
        # RSS grows by its own connections alone.
        for server, record in zip(servers, records, strict=True):
            meter = Meter(_HOST, server.port, server.path)
            meters.append(meter)
            grown = await _guarded(
                record, partial(_idle_growth, server, meter, subscribers)
            )
            if grown is not None and subscribers >= _MEMORY_SUBSCRIBERS:
                record.kib_per_connection = grown / subscribers / 1024

        # One unrecorded burst each warms the paths that the rounds time.
        events = settings.events(subscribers)
        for server, meter, record in zip(servers, meters, records, strict=True):
            await _guarded(
                record, partial(measure_burst, server, meter, min(events, 20))
            )

        for round_ in range(settings.rounds):
            order = _rotated(len(targets), round_)
            for i in order:
                step = partial(measure_burst, servers[i], meters[i], events)
                records[i].bursts.append(await _guarded(records[i], step))
            for i in order:
                steady = partial(measure_steady, servers[i], meters[i], settings)
                records[i].steadies.append(await _guarded(records[i], steady))
            print(f"  round {round_ + 1}/{settings.rounds} done", flush=True)

        # Read before the meters close: closing counts as losing, too.
        for record, meter in zip(records, meters, strict=True):
            if meter.lost:
                print(f"  {record.target.label}: {meter.lost} connections lost")
    finally:
        for meter in meters:
            meter.close()
        await asyncio.gather(
            *(server.stop() for server in servers), return_exceptions=True
        )

    return records


# -- the report ------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float:
    present = [value for value in values if value is not None and not math.isnan(value)]
    return statistics.median(present) if present else math.nan


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.0f}%"


def _metric(record: Record, name: str) -> list[float | None]:
    if name == "mem":
        return [record.kib_per_connection]

    source = record.bursts if name in {"rate", "busy", "client"} else record.steadies
    attribute = {
        "rate": "rate",
        "busy": "server_busy",
        "client": "client_busy",
        "p50": "p50_ms",
        "p99": "p99_ms",
        "cpu": "cpu_ms_per_1k",
    }[name]
    return [None if item is None else getattr(item, attribute) for item in source]


def ratio(a: Record, b: Record, name: str) -> float:
    """The median over rounds of a's figure over b's in the same round."""
    pairs = zip(_metric(a, name), _metric(b, name), strict=False)
    return _median([x / y for x, y in pairs if x is not None and y])


def _complete(record: Record) -> str:
    got = sum(b.received for b in record.bursts if b) + sum(
        s.received for s in record.steadies if s
    )
    wanted = sum(b.expected for b in record.bursts if b) + sum(
        s.expected for s in record.steadies if s
    )
    if record.error is not None:
        return "failed"
    return "all" if got >= wanted else f"{100 * got / max(1, wanted):.1f}%"


def print_table(records: Sequence[Record]) -> None:
    width = max(len(record.target.label) for record in records)
    print(
        f"{'variant':<{width}} {'deliv/s':>9} {'srv':>5} {'cli':>5} {'p50 ms':>7}"
        f" {'p99 ms':>7} {'cpu ms/1k':>9} {'KiB/conn':>8}  delivered"
    )
    for record in records:
        print(
            f"{record.target.label:<{width}}"
            f" {_fmt(_median(_metric(record, 'rate')), 0):>9}"
            f" {_percent(_median(_metric(record, 'busy'))):>5}"
            f" {_percent(_median(_metric(record, 'client'))):>5}"
            f" {_fmt(_median(_metric(record, 'p50'))):>7}"
            f" {_fmt(_median(_metric(record, 'p99'))):>7}"
            f" {_fmt(_median(_metric(record, 'cpu'))):>9}"
            f" {_fmt(record.kib_per_connection, 1):>8}  {_complete(record)}"
        )
    print(
        "(deliv/s at saturation; srv/cli: CPU of one core used by server and"
        " client during the burst;\n latency and cpu at the steady rate; medians"
        " over rounds)"
    )


def print_ratios(by_variant: dict[str, Record]) -> None:
    pairs = [
        ("starlette", "websockets"),
        ("broadcaster", "starlette"),
        ("streamer", "starlette"),
        ("streamer", "broadcaster"),
        ("streamer", "websockets"),
        ("streamer-asgi", "starlette"),
    ]
    lines = []
    for a, b in pairs:
        if a in by_variant and b in by_variant:
            first, second = by_variant[a], by_variant[b]
            figures = "  ".join(
                f"{name} {_fmt(ratio(first, second, name))}"
                for name in ("rate", "cpu", "p99", "mem")
            )
            lines.append(f"  {a + ' / ' + b:<26} {figures}")
    if lines:
        print("ratios (median of same-round ratios):")
        print("\n".join(lines))


def print_targets(by_variant: dict[str, Record], subscribers: int) -> None:
    print(f"targets for {_CANDIDATE} at {subscribers} subscribers:")
    checks = [
        ("delivery rate vs starlette", "rate", _REFERENCE, ">=", 0.9),
        ("cpu per delivery vs starlette", "cpu", _REFERENCE, "<=", 1.15),
        ("delivery rate vs broadcaster", "rate", "broadcaster", ">=", 1.5),
        ("steady p99 vs websockets", "p99", "websockets", "<=", 1.3),
        ("memory per idle conn vs starlette", "mem", _REFERENCE, "<=", 1.2),
    ]
    candidate = by_variant.get(_CANDIDATE)
    for label, name, reference, sense, bound in checks:
        base = by_variant.get(reference)
        if candidate is None or base is None:
            verdict, value = "SKIP (not measured)", math.nan
        else:
            value = ratio(candidate, base, name)
            if math.isnan(value):
                verdict = "SKIP (no figure)"
            elif (value >= bound) if sense == ">=" else (value <= bound):
                verdict = "PASS"
            else:
                verdict = "FAIL"
        print(f"  {label:<34} {_fmt(value):>6} (target {sense} {bound})  {verdict}")


def print_choice(records: Sequence[Record]) -> None:
    """Score each combination on rate, CPU, p99 and memory, each against the best."""
    figures = {
        record.target.label: {
            name: _median(_metric(record, name))
            for name in ("rate", "cpu", "p99", "mem")
        }
        for record in records
        if record.error is None
    }
    if not figures:
        print("no combination could be measured")
        return

    # A figure that some combination lacks (memory, below 100 subscribers)
    # is left out of every score rather than counted as a zero.
    names = [
        name
        for name in ("rate", "cpu", "p99", "mem")
        if not any(math.isnan(f[name]) for f in figures.values())
    ]
    best = {
        name: (max if name == "rate" else min)(f[name] for f in figures.values())
        for name in names
    }
    scores = {}
    for label, f in figures.items():
        parts = [
            f[name] / best[name] if name == "rate" else best[name] / f[name]
            for name in names
        ]
        scores[label] = math.prod(parts) ** (1 / max(1, len(parts)))

    print(f"score (geometric mean of {', '.join(names)}, each against the best):")
    width = max(len(label) for label in scores)
    for label, score in sorted(scores.items(), key=lambda item: -item[1]):
        print(f"  {label:<{width}}  {score:.3f}")
    print(f"best: {max(scores, key=scores.__getitem__)}")


# -- the run --------------------------------------------------------------------


def _versions() -> str:
    names = ("uvicorn", "starlette", "websockets", "broadcaster", "uvloop", "wsproto")
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


def _installed(name: str) -> bool:
    module = _NEEDS.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def _targets(args: argparse.Namespace) -> list[Target]:
    if args.choose:
        combinations = [(ws, loop) for ws in WS_IMPLS for loop in LOOPS]
        missing = [c for c in combinations if not all(map(_installed, c))]
        for ws, loop in missing:
            print(f"{ws}/{loop}: skipped, not installed")
        return [
            Target("starlette", ws, loop, args.http, f"starlette {ws}/{loop}")
            for ws, loop in combinations
            if (ws, loop) not in missing
        ]

    targets = []
    for variant in args.variants:
        if not _installed(variant):
            print(f"{variant}: skipped, {_NEEDS[variant]} is not installed")
            continue
        targets.append(Target(variant, args.ws, args.loop, args.http, variant))
    return targets


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, < 1 min")
    parser.add_argument(
        "--subscribers",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 100, 1000],
        help="subscriber counts, comma separated (default 1,100,1000)",
    )
    parser.add_argument(
        "--variants",
        type=lambda text: [part.strip() for part in text.split(",")],
        default=list(VARIANTS),
        help=f"comma separated, from {','.join(VARIANTS)} (default all)",
    )
    parser.add_argument("--ws", choices=WS_IMPLS, default=_DEFAULT_WS)
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=_DEFAULT_LOOP if _installed(_DEFAULT_LOOP) else "asyncio",
    )
    parser.add_argument(
        "--http",
        choices=("h11", "httptools"),
        default="httptools" if _installed("httptools") else "h11",
        help="parses only the handshake; the default when installed: httptools",
    )
    parser.add_argument(
        "--choose",
        action="store_true",
        help="measure the Starlette floor under every uvicorn WS impl and loop",
    )
    return parser


async def _run(args: argparse.Namespace) -> None:
    settings = QUICK if args.quick else FULL
    targets = _targets(args)
    if not targets:
        print("nothing to measure")
        return

    counts = [max(args.subscribers)] if args.choose else args.subscribers
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    uvicorn = (
        "each uvicorn ws/loop combination"
        if args.choose
        else f"uvicorn ws={args.ws} loop={args.loop}"
    )
    print(
        f"fanout ({settings.label}): python {platform.python_version()},"
        f" {os.cpu_count()} cores, client loop {loop_name}\n{_versions()}\n"
        f"{uvicorn}, http={args.http}",
        flush=True,
    )

    # SIGTERM cancels the run like ^C does, so the finally blocks that stop
    # the servers still run.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fanout-") as logs:
        for subscribers in counts:
            events = settings.events(subscribers)
            print(
                f"\n== {subscribers} subscriber{'s' if subscribers > 1 else ''}"
                f" of one session: {settings.rounds} round(s), bursts of"
                f" {events} events, {settings.rate:g} events/s for"
                f" {settings.seconds:g} s",
                flush=True,
            )
            records = await measure(targets, subscribers, settings, Path(logs))
            print_table(records)
            if args.choose:
                print_choice(records)
                continue

            by_variant = {r.target.variant: r for r in records if r.error is None}
            print_ratios(by_variant)
            if subscribers == max(counts):
                print_targets(by_variant, subscribers)
    print(f"\n{time.perf_counter() - started:.0f} s")


def main() -> None:
    args = _parser().parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")

    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop

    # The client runs on uvloop when it can: it must stay cheaper per
    # message than the servers it measures.
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            runner.run(_run(args))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("\ninterrupted; every server process was stopped")
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
