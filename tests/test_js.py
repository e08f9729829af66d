"""The JS client's own suite, run under Node.js as part of the pytest run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent / "js"


def _node_or_skip() -> str:
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "Node.js is not installed"
    elif not (JS / "node_modules").is_dir():
        missing = "tests/js has no node_modules: run `npm ci --prefix tests/js`"
    if missing is not None:
        # On CI a missing tool is a broken setup, not a reason to skip.
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert node is not None
    return node


@pytest.mark.timeout(300)
def test_js_client_suite_passes_under_node() -> None:
    """`node --test tests/js/` passes: reconnect, resume, dedupe and reset."""
    node = _node_or_skip()
    env = {**os.environ, "STREAMER_PYTHON": sys.executable}
    done = subprocess.run(
        [node, "--test", str(JS)],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=JS.parent.parent,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout
