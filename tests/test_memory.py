"""Tests for the memory probes, on fake cgroup trees built in tmp_path."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamer.memory import (
    GIB,
    MemoryProbe,
    MemoryReading,
    StaticMemoryProbe,
    SystemMemoryProbe,
    probe_memory,
)

# What cgroup v1 shows for "no limit": LONG_MAX rounded down to a page.
V1_UNLIMITED = "9223372036854771712"


def fake_vm(
    available: int = 12 * GIB, total: int = 16 * GIB
) -> Callable[[], SimpleNamespace]:
    """A stand-in for psutil.virtual_memory with fixed figures."""
    return lambda: SimpleNamespace(available=available, total=total)


def write_files(directory: Path, files: dict[str, str | bytes]) -> None:
    """Create ``directory`` and write each file into it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (directory / name).write_bytes(content)
        else:
            (directory / name).write_text(content)


def make_probe(
    tmp_path: Path,
    proc_lines: str,
    *,
    available: int = 12 * GIB,
    total: int = 16 * GIB,
) -> SystemMemoryProbe:
    """A probe over the fake tree at tmp_path/cgroup with the given proc lines."""
    proc_cgroup = tmp_path / "proc_cgroup"
    proc_cgroup.write_text(proc_lines)
    return SystemMemoryProbe(
        cgroup_root=tmp_path / "cgroup",
        proc_cgroup=proc_cgroup,
        virtual_memory=fake_vm(available, total),
    )


def v2_files(limit: str, current: int, inactive: int = 0) -> dict[str, str | bytes]:
    """The three cgroup v2 files the probe reads."""
    return {
        "memory.max": f"{limit}\n",
        "memory.current": f"{current}\n",
        "memory.stat": f"anon 1000\nfile 2000\ninactive_file {inactive}\n",
    }


def v1_files(limit: str, usage: int, stat: str = "") -> dict[str, str | bytes]:
    """The three cgroup v1 files the probe reads."""
    return {
        "memory.limit_in_bytes": f"{limit}\n",
        "memory.usage_in_bytes": f"{usage}\n",
        "memory.stat": stat,
    }


def test_reading_gb_properties_round_to_one_decimal() -> None:
    """available_gb and total_gb are GiB rounded to one decimal."""
    reading = MemoryReading(int(1.26 * GIB), int(15.94 * GIB), "psutil")

    assert reading.available_gb == 1.3
    assert reading.total_gb == 15.9


def test_static_probe_reports_settable_figure() -> None:
    """StaticMemoryProbe reports what it was given, and follows later changes."""
    static = StaticMemoryProbe(2 * GIB, 8 * GIB)
    probe: MemoryProbe = static
    assert probe() == MemoryReading(2 * GIB, 8 * GIB, "static")

    static.available_bytes = GIB
    assert probe() == MemoryReading(GIB, 8 * GIB, "static")


def test_static_probe_total_defaults_to_available() -> None:
    """Without a total, the ceiling is the available figure; source is settable."""
    probe = StaticMemoryProbe(3 * GIB, source="demo")

    assert probe() == MemoryReading(3 * GIB, 3 * GIB, "demo")


def test_static_probe_clamps_negative_available() -> None:
    """A negative available figure is reported as zero."""
    assert StaticMemoryProbe(-5, 10)().available_bytes == 0


def test_system_probe_without_proc_cgroup_uses_psutil(tmp_path: Path) -> None:
    """With no /proc/self/cgroup (not Linux), psutil's figures are used as is."""
    probe = SystemMemoryProbe(
        cgroup_root=tmp_path / "cgroup",
        proc_cgroup=tmp_path / "missing",
        virtual_memory=fake_vm(12 * GIB, 16 * GIB),
    )

    assert probe() == MemoryReading(12 * GIB, 16 * GIB, "psutil")


def test_system_probe_v2_limit_wins_when_tighter(tmp_path: Path) -> None:
    """A v2 limit below the host's free memory gives limit - current."""
    write_files(tmp_path / "cgroup/app", v2_files(str(4 * GIB), GIB))
    probe = make_probe(tmp_path, "0::/app\n")

    assert probe() == MemoryReading(3 * GIB, 4 * GIB, "cgroup-v2")


def test_system_probe_v2_subtracts_inactive_file(tmp_path: Path) -> None:
    """Inactive page cache counts as reclaimable, so it is not counted as used."""
    files = v2_files(str(4 * GIB), 3 * GIB, inactive=2 * GIB)
    write_files(tmp_path / "cgroup/app", files)
    probe = make_probe(tmp_path, "0::/app\n")

    assert probe() == MemoryReading(3 * GIB, 4 * GIB, "cgroup-v2")


def test_system_probe_v2_max_means_no_limit(tmp_path: Path) -> None:
    """memory.max of "max" leaves psutil's figures in charge."""
    write_files(tmp_path / "cgroup/app", v2_files("max", 15 * GIB))
    probe = make_probe(tmp_path, "0::/app\n")

    assert probe() == MemoryReading(12 * GIB, 16 * GIB, "psutil")


def test_system_probe_v2_parent_tighter_than_child(tmp_path: Path) -> None:
    """Every level up to the root is read and the least headroom wins."""
    write_files(tmp_path / "cgroup", {"memory.current": str(10 * GIB)})
    write_files(tmp_path / "cgroup/outer", v2_files(str(6 * GIB), 5 * GIB))
    write_files(tmp_path / "cgroup/outer/inner", v2_files(str(8 * GIB), GIB))
    write_files(tmp_path / "cgroup/outer/inner/leaf", v2_files("max", GIB))
    probe = make_probe(tmp_path, "0::/outer/inner/leaf\n")

    assert probe() == MemoryReading(GIB, 6 * GIB, "cgroup-v2")


def test_system_probe_v2_total_is_smallest_limit(tmp_path: Path) -> None:
    """The ceiling is the smallest limit even when another level is tighter."""
    write_files(tmp_path / "cgroup/outer", v2_files(str(4 * GIB), 3 * GIB))
    write_files(tmp_path / "cgroup/outer/inner", v2_files(str(3 * GIB), 0))
    probe = make_probe(tmp_path, "0::/outer/inner\n")

    assert probe() == MemoryReading(GIB, 3 * GIB, "cgroup-v2")


def test_system_probe_v2_container_reads_root(tmp_path: Path) -> None:
    """In a container "0::/" points at the root, where the limit files sit."""
    write_files(tmp_path / "cgroup", v2_files(str(2 * GIB), GIB // 2))
    probe = make_probe(tmp_path, "0::/\n")

    assert probe() == MemoryReading(GIB + GIB // 2, 2 * GIB, "cgroup-v2")


def test_system_probe_v2_unknown_path_falls_back_to_root(tmp_path: Path) -> None:
    """A host-side path that is not under the mount means the root is ours."""
    write_files(tmp_path / "cgroup", v2_files(str(2 * GIB), GIB))
    probe = make_probe(tmp_path, "0::/system.slice/docker-abc.scope\n")

    assert probe() == MemoryReading(GIB, 2 * GIB, "cgroup-v2")


def test_system_probe_psutil_wins_with_more_cgroup_headroom(tmp_path: Path) -> None:
    """A generous cgroup limit still lowers the ceiling but not the headroom."""
    write_files(tmp_path / "cgroup/app", v2_files(str(14 * GIB), GIB))
    probe = make_probe(tmp_path, "0::/app\n", available=2 * GIB)

    assert probe() == MemoryReading(2 * GIB, 14 * GIB, "psutil")


def test_system_probe_clamps_available_at_zero(tmp_path: Path) -> None:
    """Usage above the limit (after it was lowered) reports zero, not less."""
    write_files(tmp_path / "cgroup/app", v2_files(str(GIB), 2 * GIB))
    probe = make_probe(tmp_path, "0::/app\n")

    assert probe() == MemoryReading(0, GIB, "cgroup-v2")


def test_system_probe_v1_limit_wins(tmp_path: Path) -> None:
    """A v1 limit gives limit - (usage - total_inactive_file)."""
    stat = f"inactive_file {GIB}\ntotal_inactive_file {2 * GIB}\n"
    files = v1_files(str(4 * GIB), 3 * GIB, stat)
    write_files(tmp_path / "cgroup/memory/docker/abc", files)
    probe = make_probe(tmp_path, "5:cpuset:/\n4:memory:/docker/abc\n0::/\n")

    assert probe() == MemoryReading(3 * GIB, 4 * GIB, "cgroup-v1")


def test_system_probe_v1_falls_back_to_inactive_file(tmp_path: Path) -> None:
    """Without total_inactive_file, the v1 probe subtracts inactive_file."""
    files = v1_files(str(4 * GIB), 3 * GIB, f"cache 5\ninactive_file {GIB}\n")
    write_files(tmp_path / "cgroup/memory/job", files)
    probe = make_probe(tmp_path, "4:memory:/job\n")

    assert probe() == MemoryReading(2 * GIB, 4 * GIB, "cgroup-v1")


def test_system_probe_v1_controller_in_comma_list(tmp_path: Path) -> None:
    """The memory controller is found inside a comma-separated controller list."""
    write_files(tmp_path / "cgroup/memory/job", v1_files(str(4 * GIB), 3 * GIB))
    probe = make_probe(tmp_path, "3:cpu,memory,pids:/job\n")

    assert probe() == MemoryReading(GIB, 4 * GIB, "cgroup-v1")


@pytest.mark.parametrize("limit", [V1_UNLIMITED, str(16 * GIB), str(20 * GIB)])
def test_system_probe_v1_unlimited_uses_psutil(tmp_path: Path, limit: str) -> None:
    """A v1 limit at or above the host's total means no limit at all."""
    write_files(tmp_path / "cgroup/memory/job", v1_files(limit, 15 * GIB))
    probe = make_probe(tmp_path, "4:memory:/job\n")

    assert probe() == MemoryReading(12 * GIB, 16 * GIB, "psutil")


def test_system_probe_v1_container_reads_memory_root(tmp_path: Path) -> None:
    """When the v1 path is not under the mount, cgroup_root/memory is read."""
    write_files(tmp_path / "cgroup/memory", v1_files(str(2 * GIB), GIB))
    probe = make_probe(tmp_path, "4:memory:/docker/0123abcd\n")

    assert probe() == MemoryReading(GIB, 2 * GIB, "cgroup-v1")


def test_system_probe_hybrid_takes_tightest_version(tmp_path: Path) -> None:
    """On a hybrid host both hierarchies are read and the tighter one is named."""
    write_files(tmp_path / "cgroup/app", v2_files(str(8 * GIB), GIB))
    write_files(tmp_path / "cgroup/memory/app", v1_files(str(4 * GIB), GIB))
    probe = make_probe(tmp_path, "4:memory:/app\n0::/app\n")

    assert probe() == MemoryReading(3 * GIB, 4 * GIB, "cgroup-v1")


def test_system_probe_missing_usage_ignores_cgroup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A limit without a usage file is ignored and logged at DEBUG only once."""
    write_files(tmp_path / "cgroup/app", {"memory.max": str(GIB)})
    probe = make_probe(tmp_path, "0::/app\n")

    with caplog.at_level(logging.DEBUG, logger="streamer.memory"):
        first, second = probe(), probe()

    assert first == second == MemoryReading(12 * GIB, 16 * GIB, "psutil")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "memory.current is missing" in messages[0]
    assert caplog.records[0].levelno == logging.DEBUG


def test_system_probe_missing_stat_counts_nothing_reclaimable(tmp_path: Path) -> None:
    """Without memory.stat the whole of memory.current counts as used."""
    files = v2_files(str(4 * GIB), 3 * GIB)
    del files["memory.stat"]
    write_files(tmp_path / "cgroup/app", files)
    probe = make_probe(tmp_path, "0::/app\n")

    assert probe() == MemoryReading(GIB, 4 * GIB, "cgroup-v2")


@pytest.mark.parametrize(
    "files",
    [
        {"memory.max": "lots\n", "memory.current": "5\n"},
        {"memory.max": "", "memory.current": "5\n"},
        {"memory.max": "-1\n", "memory.current": "5\n"},
        {"memory.max": "1_000\n", "memory.current": "5\n"},
        {"memory.max": b"\xff\xfe\x00", "memory.current": "5\n"},
        {"memory.max": str(GIB), "memory.current": "oops\n"},
    ],
    ids=["word", "empty", "negative", "underscore", "binary", "bad-current"],
)
def test_system_probe_garbage_ignores_cgroup(
    tmp_path: Path, files: dict[str, str | bytes]
) -> None:
    """A limit or usage file that is not a byte count makes psutil's figure win."""
    write_files(tmp_path / "cgroup/app", files)
    probe = make_probe(tmp_path, "0::/app\n")

    assert probe() == MemoryReading(12 * GIB, 16 * GIB, "psutil")


def test_system_probe_garbage_stat_counts_nothing_reclaimable(tmp_path: Path) -> None:
    """A memory.stat with no usable inactive figure subtracts nothing."""
    files = v1_files(str(4 * GIB), 3 * GIB, "total_inactive_file x\nnonsense\n\n")
    write_files(tmp_path / "cgroup/memory/job", files)
    probe = make_probe(tmp_path, "4:memory:/job\n")

    assert probe() == MemoryReading(GIB, 4 * GIB, "cgroup-v1")


def test_system_probe_unreadable_file_ignores_cgroup(tmp_path: Path) -> None:
    """A limit file that cannot be read (here a directory) is ignored."""
    write_files(tmp_path / "cgroup/app", {"memory.current": "5\n"})
    (tmp_path / "cgroup/app/memory.max").mkdir()
    probe = make_probe(tmp_path, "0::/app\n")

    assert probe() == MemoryReading(12 * GIB, 16 * GIB, "psutil")


@pytest.mark.parametrize(
    "proc_lines",
    ["", "garbage\n", "::\n", "4:memory\n", "0::/../../etc\n", b"\xff:\xfe\n"],
    ids=["empty", "word", "colons", "no-path", "dotdot", "binary"],
)
def test_system_probe_garbage_proc_cgroup_never_raises(
    tmp_path: Path, proc_lines: str | bytes
) -> None:
    """A malformed /proc/self/cgroup leaves only the root or psutil to read."""
    proc_cgroup = tmp_path / "proc_cgroup"
    if isinstance(proc_lines, bytes):
        proc_cgroup.write_bytes(proc_lines)
    else:
        proc_cgroup.write_text(proc_lines)
    probe = SystemMemoryProbe(
        cgroup_root=tmp_path / "cgroup",
        proc_cgroup=proc_cgroup,
        virtual_memory=fake_vm(),
    )

    assert probe() == MemoryReading(12 * GIB, 16 * GIB, "psutil")


def test_system_probe_rereads_usage_every_call(tmp_path: Path) -> None:
    """Limit and usage are read afresh on each call."""
    directory = tmp_path / "cgroup/app"
    write_files(directory, v2_files(str(4 * GIB), GIB))
    probe = make_probe(tmp_path, "0::/app\n")
    assert probe().available_bytes == 3 * GIB

    (directory / "memory.current").write_text(str(2 * GIB))
    assert probe().available_bytes == 2 * GIB

    (directory / "memory.max").write_text("max")
    assert probe() == MemoryReading(12 * GIB, 16 * GIB, "psutil")


def test_system_probe_resolves_cgroup_once(tmp_path: Path) -> None:
    """/proc/self/cgroup is read at construction, not on every call."""
    write_files(tmp_path / "cgroup/app", v2_files(str(4 * GIB), GIB))
    probe = make_probe(tmp_path, "0::/app\n")
    (tmp_path / "proc_cgroup").write_text("0::/elsewhere\n")

    assert probe().source == "cgroup-v2"


def test_system_probe_on_this_machine_is_plausible() -> None:
    """The real probe gives a positive figure from one of the three sources."""
    reading = SystemMemoryProbe()()

    assert reading.source in {"psutil", "cgroup-v2", "cgroup-v1"}
    assert 0 < reading.available_bytes <= reading.total_bytes


def test_probe_memory_returns_a_reading() -> None:
    """probe_memory reads through the module's default system probe."""
    reading = probe_memory()

    assert isinstance(reading, MemoryReading)
    assert reading.source in {"psutil", "cgroup-v2", "cgroup-v1"}
