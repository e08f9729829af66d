"""How much memory the scheduler may still hand out, seen from inside a container.

``psutil.virtual_memory()`` reads the host's ``/proc/meminfo``, so inside a
cgroup it reports memory the kernel will never let this process have. The
:class:`SystemMemoryProbe` also reads the memory cgroup the process lives in
(v2, v1, or both on a hybrid host) and reports whichever figure is smaller::

    headroom = limit - (usage - inactive page cache)

Inactive file pages count as free because the kernel reclaims them before it
lets the cgroup hit its limit. Every level from the process's cgroup up to the
root is read and the tightest one wins, since a parent's limit binds its
children. A limit or usage file that is missing, unreadable or holds garbage
makes that level count as unlimited, and a bad ``memory.stat`` makes nothing
count as reclaimable: the probe never raises on the cgroup side.

:class:`StaticMemoryProbe` reports whatever a test or demo sets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import psutil

__all__ = [
    "GIB",
    "MemoryProbe",
    "MemoryReading",
    "StaticMemoryProbe",
    "SystemMemoryProbe",
    "probe_memory",
]

GIB = 1024**3

logger = logging.getLogger("streamer.memory")

_V2 = "cgroup-v2"
_V1 = "cgroup-v1"


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """One look at memory: what is left, the ceiling, and who said so."""

    available_bytes: int
    total_bytes: int
    source: str

    @property
    def available_gb(self) -> float:
        """``available_bytes`` in GiB, rounded to one decimal."""
        return round(self.available_bytes / GIB, 1)

    @property
    def total_gb(self) -> float:
        """``total_bytes`` in GiB, rounded to one decimal."""
        return round(self.total_bytes / GIB, 1)


class MemoryProbe(Protocol):
    """Anything that can be asked how much memory is left."""

    def __call__(self) -> MemoryReading: ...


class StaticMemoryProbe:
    """Reports a fixed figure that tests and demos may change between calls.

    When ``total_bytes`` is None the ceiling follows ``available_bytes``.
    """

    def __init__(
        self,
        available_bytes: int,
        total_bytes: int | None = None,
        source: str = "static",
    ) -> None:
        self.available_bytes = available_bytes
        self.total_bytes = total_bytes
        self.source = source

    def __call__(self) -> MemoryReading:
        available = max(0, self.available_bytes)
        total = available if self.total_bytes is None else self.total_bytes
        return MemoryReading(available, total, self.source)


@dataclass(frozen=True, slots=True)
class _Level:
    limit: int
    headroom: int


class _Unreadable(Exception):
    """A cgroup file exists but cannot be turned into a figure."""


class SystemMemoryProbe:
    """psutil's view of the host, narrowed by this process's memory cgroup.

    The cgroup directories are found once, from ``proc_cgroup``; the limit and
    usage files in them are read again on every call.
    """

    def __init__(
        self,
        *,
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        proc_cgroup: Path = Path("/proc/self/cgroup"),
        virtual_memory: Callable[[], Any] = psutil.virtual_memory,
    ) -> None:
        self._virtual_memory = virtual_memory
        self._levels = _resolve_levels(cgroup_root, proc_cgroup)
        # The directories are fixed, so this set stays small; it keeps a broken
        # cgroup from logging on every document.
        self._reported: set[Path] = set()

    def __call__(self) -> MemoryReading:
        host = self._virtual_memory()
        host_total = int(host.total)
        available, total, source = int(host.available), host_total, "psutil"

        for kind, directory in self._levels:
            try:
                if kind == _V2:
                    level = _read_v2(directory)
                else:
                    level = _read_v1(directory, host_total)
            except _Unreadable as exc:
                self._report(directory, exc)
                continue
            if level is None:
                continue

            total = min(total, level.limit)
            # Strictly smaller: on a tie psutil is named, as the cgroup adds
            # nothing to what the host already says.
            if level.headroom < available:
                available, source = level.headroom, kind

        return MemoryReading(max(0, available), total, source)

    def _report(self, directory: Path, exc: _Unreadable) -> None:
        if directory not in self._reported:
            self._reported.add(directory)
            logger.debug("ignoring cgroup %s: %s", directory, exc)


def _resolve_levels(
    cgroup_root: Path, proc_cgroup: Path
) -> tuple[tuple[str, Path], ...]:
    """The cgroup directories to read, innermost first, tagged with their version."""
    try:
        text = proc_cgroup.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        logger.debug("cannot read %s, using psutil only: %s", proc_cgroup, exc)
        return ()

    levels: list[tuple[str, Path]] = []
    for line in text.splitlines():
        hierarchy, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep and sep2):
            continue
        if hierarchy == "0" and not controllers:
            levels += [(_V2, d) for d in _walk_up(cgroup_root, path)]
        elif "memory" in controllers.split(","):
            memory_root = cgroup_root / "memory"
            levels += [(_V1, d) for d in _walk_up(memory_root, path)]
    return tuple(levels)


def _walk_up(root: Path, cgroup_path: str) -> list[Path]:
    """``root/cgroup_path`` and each of its parents up to ``root`` itself."""
    parts = PurePosixPath(cgroup_path.strip()).parts
    parts = parts[1:] if parts[:1] == ("/",) else parts
    leaf = root.joinpath(*parts)
    try:
        found = ".." not in parts and leaf.is_dir()
    except OSError:
        found = False

    # Without its own cgroup namespace a container sees the host's path in
    # /proc/self/cgroup, yet its own cgroup is what is mounted at the root.
    if not found:
        return [root]
    return [root.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read_v2(directory: Path) -> _Level | None:
    limit_file = directory / "memory.max"
    text = _read(limit_file)
    if text is None or text.strip() == "max":
        return None

    limit = _parse_bytes(text, limit_file)
    usage = _require_bytes(directory / "memory.current")
    reclaimable = _stat_value(directory / "memory.stat", ("inactive_file",))
    return _Level(limit, limit - max(0, usage - reclaimable))


def _read_v1(directory: Path, host_total: int) -> _Level | None:
    limit_file = directory / "memory.limit_in_bytes"
    text = _read(limit_file)
    if text is None:
        return None

    # v1 has no "max": an unlimited cgroup shows a huge page-rounded number.
    limit = _parse_bytes(text, limit_file)
    if limit >= host_total:
        return None

    usage = _require_bytes(directory / "memory.usage_in_bytes")
    # total_ counts the cgroup's children too, which usage_in_bytes includes.
    keys = ("total_inactive_file", "inactive_file")
    reclaimable = _stat_value(directory / "memory.stat", keys)
    return _Level(limit, limit - max(0, usage - reclaimable))


def _read(path: Path) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        return path.read_text(encoding="ascii")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        raise _Unreadable(f"cannot read {path.name}: {exc}") from exc


def _require_bytes(path: Path) -> int:
    text = _read(path)
    if text is None:
        raise _Unreadable(f"{path.name} is missing")
    return _parse_bytes(text, path)


def _parse_bytes(text: str, path: Path) -> int:
    value = text.strip()
    # int() would also take signs, underscores and non-ASCII digits.
    if not (value.isascii() and value.isdigit()):
        raise _Unreadable(f"{path.name} holds {value[:32]!r}, not a byte count")
    return int(value)


def _stat_value(path: Path, keys: tuple[str, ...]) -> int:
    """The first of ``keys`` found in a memory.stat file, else 0.

    A stat file that cannot be read leaves nothing counted as reclaimable,
    which errs towards waiting for memory rather than overcommitting.
    """
    try:
        text = _read(path)
    except _Unreadable:
        return 0
    if text is None:
        return 0

    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        fields[key] = value.strip()
    for key in keys:
        value = fields.get(key, "")
        if value.isascii() and value.isdigit():
            return int(value)
    return 0


_default_probe = SystemMemoryProbe()


def probe_memory() -> MemoryReading:
    """Read memory with the process-wide :class:`SystemMemoryProbe`."""
    return _default_probe()
