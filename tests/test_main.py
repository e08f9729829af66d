"""The command line's demo, run as a real process."""

from __future__ import annotations

import subprocess
import sys


def test_main_demo_runs_and_logs_progress() -> None:
    """`python -m streamer demo` converts documents and logs each job's end."""
    done = subprocess.run(
        [
            sys.executable, "-m", "streamer", "demo",
            "--documents", "2", "--jobs", "2", "--seconds", "0.05",
            "--failure-rate", "0", "--memory-required-gb", "0.01",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("job.completed") == 2
    assert "job.progress" in done.stderr
    assert "ended completed: no errors" in done.stderr


def test_main_rejects_unknown_command() -> None:
    """An unknown subcommand exits with a usage error."""
    done = subprocess.run(
        [sys.executable, "-m", "streamer", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
