"""Tests of the viewer (static/) in a real Chromium against a real server.

Each test serves the app on port 0 with the static files mounted at "/",
opens the page in Debian's Chromium through Playwright, drives the jobs with
the Controlled converter and checks what a person would see. Each saves a
screenshot under tests/output/<test name>/. Without Playwright or Chromium
(``$STREAMER_CHROMIUM``, by default /usr/bin/chromium) the tests are
skipped, unless CI is set: there a missing browser fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from streamer import (
    Backoff,
    JobManager,
    StaticMemoryProbe,
    SystemClock,
    converter_name,
)
from streamer.app import create_app
from streamer.errors import StoreError
from streamer.memory import GIB
from streamer.runner import StreamerServer, server_config
from streamer.server import error_response

from .conftest import TIMEOUT
from .helpers import Controlled
from .live import Live, serve
from .test_journal import FlakyStore

# Imported here so the tests read plainly; without Playwright the browser
# fixture skips (or, in CI, fails) before any of them runs.
try:
    from playwright.async_api import async_playwright, expect
except ImportError:
    async_playwright = expect = None

#: Debian's Chromium; Playwright's own browser downloads are not used.
CHROMIUM = Path(os.environ.get("STREAMER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
]
ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "static"
OUTPUT = Path(__file__).resolve().parent / "output"
SECRET = b"test secret of the browser tests"

#: Playwright counts in milliseconds.
WAIT_MS = TIMEOUT * 1000


def _missing() -> str | None:
    if async_playwright is None:
        return "Playwright for Python is not installed (pip install playwright)"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def viewer_app(
    manager: JobManager, converter: Controlled, **settings: Any
) -> Starlette:
    """The streamer app with static/ served at "/" after the API routes."""
    app = create_app(manager, converter=converter, secret=SECRET, **settings)

    # Once create_app serves the viewer itself, its routes come first and
    # this mount would be dead weight.
    if not any(getattr(r, "path", None) in ("", "/") for r in app.router.routes):
        app.router.routes.append(Mount("/", StaticFiles(directory=STATIC, html=True)))
    return app


@contextlib.asynccontextmanager
async def serve_at(app: Starlette, port: int) -> AsyncIterator[None]:
    """Serve ``app`` on a given port: a restarted server, where the old one was."""
    config = server_config(app, host="127.0.0.1", port=port, log_level="warning")
    server = StreamerServer(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError(f"the server on port {port} did not start")
                await asyncio.sleep(0.005)
        yield
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT):
            await task


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests cannot run in CI: {reason}")
        pytest.skip(reason)

    expect.set_options(timeout=WAIT_MS)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def output(request: pytest.FixtureRequest) -> Path:
    """This test's folder of screenshots, emptied first."""
    # The folder ignores itself, so screenshots never reach a commit.
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / ".gitignore").write_text("*\n")
    folder = OUTPUT / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
async def page(browser: Any, output: Path) -> AsyncIterator[Any]:
    """A fresh page, which must end without script errors."""
    context = await browser.new_context(viewport={"width": 1100, "height": 800})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        await context.close()
    assert errors == [], f"script errors on the page: {errors}"


@pytest.fixture
def converter() -> Controlled:
    return Controlled()


@pytest.fixture
def manager(make_manager: Callable[..., JobManager]) -> JobManager:
    # The real clock, since the server and the browser run on it; memory is
    # the probe's 24 GiB and documents need little, unless a test says so.
    return make_manager(clock=SystemClock(), memory_required_gb=1.0)


async def open_session(page: Any, live: Live) -> tuple[str, str]:
    """Open the viewer on a new session, through its fragment, and wait for live."""
    session_id, token = await live.session()
    await page.goto(f"{live.url}/#session={session_id}&token={token}")
    await expect(page.locator("#connection")).to_have_text("Live")
    return session_id, token


async def create_job(live: Live, session: tuple[str, str], ids: list[str]) -> str:
    response = await live.http.post(
        f"/api/sessions/{session[0]}/jobs",
        json={"document_ids": ids},
        headers={"Authorization": f"Bearer {session[1]}"},
    )
    response.raise_for_status()
    job_id: str = response.json()["job_id"]
    return job_id


def card(page: Any, job_id: str) -> Any:
    return page.locator(f'li.job[data-job-id="{job_id}"]')


async def shot(page: Any, output: Path, name: str) -> None:
    await page.screenshot(path=output / f"{name}.png", full_page=True)


async def test_browser_progress_advances_to_completion(
    page: Any, output: Path, manager: JobManager, converter: Controlled
) -> None:
    """A job started from the page shows its progress, count and outcome to the end."""
    async with serve(viewer_app(manager, converter)) as live:
        await page.goto(live.url + "/")
        await page.get_by_role("button", name="New session").click()
        await expect(page.locator("#connection")).to_have_text("Live")
        assert "token=st1." in page.url

        await page.get_by_text("Or name documents already on the server").click()
        await page.get_by_label("Document ids").fill("a.pdf, b.pdf")
        await page.get_by_role("button", name="Start job").click()
        job = page.locator("li.job")
        await expect(job).to_have_count(1)
        bar = job.get_by_role("progressbar")
        await expect(bar).to_have_attribute("aria-valuenow", "0")

        await converter.wait_started("a.pdf", TIMEOUT)
        converter.callbacks["a.pdf"](0.5)
        await expect(bar).to_have_attribute("aria-valuenow", "25")
        await expect(job.locator(".current")).to_have_text("Converting: a.pdf")
        await shot(page, output, "running")

        converter.finish("a.pdf")
        await expect(job.locator(".count")).to_have_text("1 of 2 documents")
        await converter.wait_started("b.pdf", TIMEOUT)
        converter.finish("b.pdf")

        await expect(job.locator(".badge")).to_have_text("Completed")
        await expect(bar).to_have_attribute("aria-valuenow", "100")
        await expect(bar).to_have_attribute("aria-valuetext", "100%, 2 of 2 documents")
        await expect(job.locator(".document .doc-status")).to_have_text(
            ["converted", "converted"]
        )
        await expect(
            job.get_by_role("button", name="Download the result of a.pdf")
        ).to_be_visible()
        await expect(job.get_by_role("button", name="Cancel")).to_be_hidden()
        await expect(page.locator("#announcer")).to_contain_text("completed")
        await shot(page, output, "completed")


async def test_browser_memory_wait_appears_and_clears(
    page: Any,
    output: Path,
    make_manager: Callable[..., JobManager],
    probe: StaticMemoryProbe,
    converter: Controlled,
) -> None:
    """A job short of memory says so plainly, and runs on once memory is free."""
    probe.available_bytes = int(3.2 * GIB)
    manager = make_manager(
        clock=SystemClock(),
        memory_required_gb=10.0,
        backoff=Backoff(initial=0.2, cap=0.4, jitter=0.0),
    )
    async with serve(viewer_app(manager, converter)) as live:
        session = await open_session(page, live)
        job_id = await create_job(live, session, ["a.pdf"])
        job = card(page, job_id)
        memory = job.locator(".memory")

        await expect(memory).to_be_visible()
        await expect(memory).to_contain_text(
            "Waiting for memory: 3.2 GB free, 10 GB needed, next check in"
        )
        await expect(job.locator(".badge")).to_have_text("Waiting for memory")
        await expect(job.locator(".current")).to_have_text("Next: a.pdf")
        await shot(page, output, "waiting")

        probe.available_bytes = 24 * GIB
        await expect(memory).to_be_hidden()
        await expect(job.locator(".badge")).to_have_text("Running")
        await converter.wait_started("a.pdf", TIMEOUT)
        converter.finish("a.pdf")
        await expect(job.locator(".badge")).to_have_text("Completed")
        await shot(page, output, "cleared")


async def test_browser_cancel_from_the_keyboard_cancels(
    page: Any, output: Path, manager: JobManager, converter: Controlled
) -> None:
    """The cancel button, reached and pressed from the keyboard, cancels the job."""
    async with serve(viewer_app(manager, converter)) as live:
        session = await open_session(page, live)
        job_id = await create_job(live, session, ["a.pdf", "b.pdf"])
        await converter.wait_started("a.pdf", TIMEOUT)
        job = card(page, job_id)
        cancel = job.get_by_role("button", name="Cancel")

        await cancel.focus()
        await page.keyboard.press("Enter")
        await expect(job.locator(".badge")).to_have_text("Cancelled")
        await expect(cancel).to_be_hidden()
        await expect(job.locator(".error")).to_have_text("Job was cancelled")
        await expect(job.locator(".document .doc-status")).to_have_text(
            ["cancelled", "waiting"]
        )
        job_state = manager.get_job(job_id)
        assert job_state is not None and job_state.status.value == "cancelled"

        # Focus is not lost with the button: it moves to the job's title.
        focused = await page.evaluate("document.activeElement.id")
        assert focused == f"job-{job_id}-title"
        await shot(page, output, "cancelled")


async def test_browser_cancel_click_cancels(
    page: Any, output: Path, manager: JobManager, converter: Controlled
) -> None:
    """A mouse click on a running job's cancel button cancels it on the server."""
    async with serve(viewer_app(manager, converter)) as live:
        session = await open_session(page, live)
        job_id = await create_job(live, session, ["a.pdf"])
        await converter.wait_started("a.pdf", TIMEOUT)
        job = card(page, job_id)
        await job.get_by_role("button", name="Cancel").click()
        await expect(job.locator(".badge")).to_have_text("Cancelled")
        job_state = manager.get_job(job_id)
        assert job_state is not None and job_state.status.value == "cancelled"
        assert converter.cleaned == ["a.pdf"]
        await shot(page, output, "cancelled")


async def test_browser_server_restart_ends_in_the_new_servers_state(
    page: Any,
    output: Path,
    make_manager: Callable[..., JobManager],
    converter: Controlled,
    tmp_path: Path,
) -> None:
    """After a restart mid-job the page shows the new server's jobs, and only those.

    The new server has a data directory of its own, so that it restores
    nothing: the page must drop the old job because the server says so.
    """
    first = make_manager(clock=SystemClock(), memory_required_gb=1.0)
    old_app = viewer_app(first, converter, data_dir=tmp_path / "first")
    async with serve(old_app) as live:
        session = await open_session(page, live)
        old_job = await create_job(live, session, ["a.pdf", "b.pdf"])
        await converter.wait_started("a.pdf", TIMEOUT)
        converter.callbacks["a.pdf"](0.5)
        await expect(card(page, old_job).get_by_role("progressbar")).to_have_attribute(
            "aria-valuenow", "25"
        )

        live.server.should_exit = True
        await expect(page.locator("#connection")).to_contain_text("econnecting")
        await shot(page, output, "reconnecting")

        # The new process knows nothing of the old job, and has one of its own.
        second = make_manager(clock=SystemClock(), memory_required_gb=1.0)
        restarted = Controlled()
        new_job = second.create_job(session[0], ["n.pdf"])
        await second.start_job(new_job, restarted)
        new_app = viewer_app(second, restarted, data_dir=tmp_path / "second")
        async with serve_at(new_app, live.port):
            await expect(page.locator("#connection")).to_have_text("Live")
            await expect(page.locator("li.job")).to_have_count(1)
            await expect(card(page, new_job)).to_be_visible()
            await expect(card(page, old_job)).to_have_count(0)
            await expect(page.locator("#announcer")).to_contain_text(
                "showing the server's current state"
            )

            await restarted.wait_started("n.pdf", TIMEOUT)
            restarted.finish("n.pdf")
            await expect(card(page, new_job).locator(".badge")).to_have_text(
                "Completed"
            )
            await expect(page.locator("#job-count")).to_have_text("1 job")
            await shot(page, output, "restarted")


async def test_browser_bad_token_is_refused_clearly(
    page: Any, output: Path, manager: JobManager, converter: Controlled
) -> None:
    """A link with a bad token says the server refused it, why, and offers a new one."""
    async with serve(viewer_app(manager, converter)) as live:
        session_id, _ = await live.session()
        await page.goto(f"{live.url}/#session={session_id}&token=st1.bad.token")

        refusal = page.locator("#refusal")
        await expect(refusal).to_be_visible()
        await expect(refusal).to_contain_text("The server refused this session link")
        await expect(refusal).to_contain_text("token_invalid")
        await expect(page.locator("#connection")).to_have_attribute(
            "data-status", "refused"
        )
        await expect(page.get_by_role("button", name="New session")).to_be_visible()
        await expect(page.locator("#new-job")).to_be_hidden()
        await shot(page, output, "refused")


async def test_browser_save_failure_is_announced(
    page: Any, output: Path, manager: JobManager, converter: Controlled
) -> None:
    """A job whose state cannot be saved says so in the page, with the reason."""
    store = FlakyStore()
    async with serve(viewer_app(manager, converter, store=store)) as live:
        session = await open_session(page, live)
        job_id = await create_job(live, session, ["a.pdf"])
        await converter.wait_started("a.pdf", TIMEOUT)
        store.error = StoreError("could not save to streamer.db: the disk is full")
        converter.finish("a.pdf")
        # The card keeps saying so; the announcer's line may already have
        # given way to the job's completion, which renders a frame later.
        await expect(card(page, job_id).locator(".error")).to_have_text(
            "Not saved yet (the server retries): could not save to streamer.db:"
            " the disk is full"
        )
        await shot(page, output, "save-failed")
        store.error = None


async def test_browser_hundred_jobs_at_ten_updates_a_second_stay_smooth(
    page: Any, output: Path, make_manager: Callable[..., JobManager]
) -> None:
    """A hundred jobs at ten updates a second render in batches, one node each."""
    converter = Controlled()
    manager = make_manager(
        clock=SystemClock(), memory_required_gb=0.01, max_concurrent=None
    )
    async with serve(viewer_app(manager, converter)) as live:
        session = await open_session(page, live)
        documents = [f"doc-{n:03}.pdf" for n in range(100)]
        for document in documents:
            job_id = manager.create_job(session[0], [document])
            await manager.start_job(job_id, converter)
        for document in documents:
            await converter.wait_started(document, TIMEOUT)
        await expect(page.locator("li.job")).to_have_count(100)
        await page.evaluate(FRAME_PROBE)

        # The load: every job reports progress ten times a second for three
        # seconds, paced by the clock, as a converter would report it.
        steps = 30
        for step in range(1, steps + 1):
            for document in documents:
                converter.callbacks[document](step / (steps + 10))
            await asyncio.sleep(0.1)

        last = round(100 * steps / (steps + 10))
        bars = page.locator('li.job [role="progressbar"]')
        await expect(bars.nth(0)).to_have_attribute("aria-valuenow", str(last))
        await expect(bars.nth(99)).to_have_attribute("aria-valuenow", str(last))
        report = await page.evaluate(FRAME_REPORT)
        await shot(page, output, "hundred")

    # Frame times are figures for bench/viewer.py to print, not assertions:
    # a shared machine's timing would make them flaky here.
    (output / "frames.json").write_text(json.dumps(report) + "\n")
    assert report["nodes"] == 100, report
    assert report["messages"] >= 1000, report

    # Updates are batched per frame: far fewer renders than messages.
    assert 20 <= report["renders"] < report["messages"], report


#: Records the gaps between animation frames from now on.
FRAME_PROBE = """() => {
  const gaps = [];
  let last = performance.now();
  const tick = (now) => {
    gaps.push(now - last);
    last = now;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  globalThis.frameGaps = gaps;
  globalThis.rendersBefore = streamerViewer.jobs.timings.count;
  globalThis.messagesBefore = streamerViewer.streamer.statistics().messages;
}"""

#: What the frames and the viewer's renders took since FRAME_PROBE.
FRAME_REPORT = """() => {
  const p95 = (values) => {
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.floor(0.95 * (sorted.length - 1))] ?? 0;
  };
  const timings = streamerViewer.jobs.timings;
  const renders = timings.values().slice(-(timings.count - rendersBefore));
  return {
    nodes: document.querySelectorAll("li.job").length,
    messages: streamerViewer.streamer.statistics().messages - messagesBefore,
    frames: frameGaps.length,
    gap_p95: p95(frameGaps),
    gap_max: Math.max(...frameGaps),
    renders: renders.length,
    render_p95: p95(renders),
    render_max: Math.max(...renders),
  };
}"""


async def test_browser_viewer_screenshot_mid_job(
    browser: Any,
    output: Path,
    make_manager: Callable[..., JobManager],
    probe: StaticMemoryProbe,
) -> None:
    """Jobs mid-way, one short of memory, render in light, dark and at phone width."""
    # With STREAMER_DOCS_SCREENSHOT=1 the light one becomes docs/viewer.png,
    # the README's picture.
    # 24 GiB free and 10 GiB a document: two documents convert, a third waits.
    converter = Controlled()
    manager = make_manager(clock=SystemClock(), memory_required_gb=10.0)
    async with serve(viewer_app(manager, converter)) as live:
        session_id, token = await live.session()

        done = manager.create_job(session_id, ["invoice.pdf", "scan.pdf"])
        await manager.start_job(done, converter)
        converter.fail["scan.pdf"] = "page 3: unsupported image encoding JBIG2"
        for document in ["invoice.pdf", "scan.pdf"]:
            await converter.wait_started(document, TIMEOUT)
            converter.finish(document)
        await manager.wait_job(done)

        # Earlier jobs took 20 s a document, so the running ones have an ETA.
        manager.history.load(
            {converter_name(converter): {"seconds_per_document": 20.0, "documents": 8}}
        )
        report = manager.create_job(
            session_id, ["report.pdf", "slides.pdf", "notes.pdf"]
        )
        await manager.start_job(report, converter)
        await converter.wait_started("report.pdf", TIMEOUT)
        converter.callbacks["report.pdf"](0.4)
        thesis = manager.create_job(session_id, ["thesis.pdf"])
        await manager.start_job(thesis, converter)
        await converter.wait_started("thesis.pdf", TIMEOUT)
        converter.callbacks["thesis.pdf"](0.7)

        # Two documents hold 20 GiB of it: 3.2 GiB is left for a third.
        probe.available_bytes = int(23.2 * GIB)
        waiting = manager.create_job(session_id, ["atlas.pdf", "maps.pdf"])
        await manager.start_job(waiting, converter)

        shots = {
            "light": ({"width": 1200, "height": 820}, "light"),
            "dark": ({"width": 1200, "height": 820}, "dark"),
            "phone": ({"width": 390, "height": 844}, "light"),
        }
        for name, (viewport, scheme) in shots.items():
            context = await browser.new_context(viewport=viewport, color_scheme=scheme)
            page = await context.new_page()
            await page.goto(f"{live.url}/#session={session_id}&token={token}")
            await expect(page.locator("#connection")).to_have_text("Live")
            await expect(page.locator("li.job")).to_have_count(4)
            await expect(card(page, waiting).locator(".memory")).to_contain_text(
                "3.2 GB free, 10 GB needed"
            )
            await expect(card(page, report).locator(".eta")).to_contain_text("left")
            await expect(
                card(page, done).locator(".doc-detail").nth(1)
            ).to_contain_text("JBIG2")
            if name == "phone":
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= viewport["width"], (
                    "the page scrolls sideways on a phone"
                )
            await page.screenshot(path=output / f"{name}.png", full_page=True)
            await context.close()

    if os.environ.get("STREAMER_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(output / "light.png", ROOT / "docs" / "viewer.png")


#: The smallest file that says it is a PDF; the stand-in below never parses it.
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def with_uploads(
    app: Starlette, answer: Callable[[Request], Awaitable[Response]]
) -> Starlette:
    """``app`` with ``answer`` in front of its own documents route, if any."""
    route = Route("/api/sessions/{session_id}/documents", answer, methods=["POST"])
    app.router.routes.insert(0, route)
    return app


async def test_browser_upload_refused_falls_back_to_document_ids(
    page: Any, output: Path, manager: JobManager, converter: Controlled
) -> None:
    """A server without uploads gets the files' job started by document ids instead."""

    async def absent(request: Request) -> Response:
        # What a server answers for a route it does not have.
        return error_response(404, "not_found", "Not Found")

    async with serve(with_uploads(viewer_app(manager, converter), absent)) as live:
        await open_session(page, live)
        await page.set_input_files(
            "#files",
            [{"name": "report.pdf", "mimeType": "application/pdf", "buffer": PDF}],
        )
        await expect(page.locator("#picked")).to_contain_text("report.pdf")
        await page.get_by_role("button", name="Start job").click()

        await expect(page.locator("#form-message")).to_have_text(
            "This server takes no uploads; name the documents instead."
        )
        ids = page.get_by_label("Document ids")
        await expect(ids).to_be_focused()
        await expect(ids).to_have_value("report.pdf")
        await expect(page.locator("#picked li")).to_have_count(0)
        await page.get_by_role("button", name="Start job").click()
        await expect(page.locator("li.job .doc-name")).to_have_text(["report.pdf"])
        await shot(page, output, "fallback")


async def test_browser_upload_sends_files_and_starts_their_job(
    page: Any, output: Path, manager: JobManager, converter: Controlled
) -> None:
    """Picked PDF files go up as `file` fields, and the job names what came back."""
    received: list[tuple[str, bytes]] = []

    async def stand_in(request: Request) -> Response:
        # The contract of the upload endpoint, nothing more: one document
        # per `file` field.
        async with request.form() as form:
            for upload in form.getlist("file"):
                assert not isinstance(upload, str)
                received.append((upload.filename or "", await upload.read()))
        documents = [
            {"document_id": f"doc-{n}", "filename": name, "size_bytes": len(data)}
            for n, (name, data) in enumerate(received)
        ]
        return JSONResponse({"documents": documents}, status_code=201)

    async with serve(with_uploads(viewer_app(manager, converter), stand_in)) as live:
        await open_session(page, live)
        files = [
            {"name": name, "mimeType": "application/pdf", "buffer": PDF}
            for name in ["a.pdf", "b.pdf"]
        ]
        await page.set_input_files("#files", files)
        await page.set_input_files(
            "#files", [{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"no"}]
        )
        await expect(page.locator("#form-message")).to_contain_text("skipped notes.txt")
        await page.get_by_role("button", name="Start job").click()

        # The job names the uploads by id; the page shows their file names.
        names = page.locator("li.job .doc-name")
        await expect(names).to_have_text(["a.pdf", "b.pdf"])
        await expect(names.first).to_have_attribute("title", "doc-0")
        assert [d.document_id for d in manager.list_jobs()[0].documents] == [
            "doc-0",
            "doc-1",
        ]
        assert received == [("a.pdf", PDF), ("b.pdf", PDF)]
        await expect(page.locator("#picked li")).to_have_count(0)
        await shot(page, output, "uploaded")


async def test_browser_result_downloads_with_the_token_in_a_header(
    page: Any, output: Path, manager: JobManager, converter: Controlled
) -> None:
    """A converted document's result downloads, its token sent as a header only."""
    asked: list[Request] = []

    async def result(request: Request) -> Response:
        asked.append(request)
        return Response(
            b"# Report\n",
            media_type="text/markdown",
            headers={"Content-Disposition": 'attachment; filename="report.md"'},
        )

    app = viewer_app(manager, converter)
    path = "/api/sessions/{session_id}/jobs/{job_id}/documents/{document_id}/result"
    app.router.routes.insert(0, Route(path, result, methods=["GET"]))
    async with serve(app) as live:
        session = await open_session(page, live)
        job_id = await create_job(live, session, ["report.pdf"])
        await converter.wait_started("report.pdf", TIMEOUT)
        converter.finish("report.pdf")
        button = card(page, job_id).get_by_role(
            "button", name="Download the result of report.pdf"
        )
        await expect(button).to_be_visible()
        async with page.expect_download() as info:
            await button.click()
        download = await info.value
        saved = output / "report.md"
        await download.save_as(saved)
        await shot(page, output, "downloaded")

    assert download.suggested_filename == "report.md"
    assert saved.read_bytes() == b"# Report\n"
    assert [r.path_params["document_id"] for r in asked] == ["report.pdf"]
    assert asked[0].headers["authorization"] == f"Bearer {session[1]}"
    assert "token" not in asked[0].query_params
