"""The child process's side of a PDF conversion; none of it runs in the server.

:mod:`streamer._launcher` starts each child with :func:`run`, and
:mod:`streamer.worker` sends it a :class:`Task` and reads its reports on a
pipe, one JSON object a line::

    {"pages": 12}                           opened: the document has 12 pages
    {"page": 3}                             page 3 is written out
    {"done": 48213}                         all pages written: characters in all
    {"refused": "encrypted", "detail": ""}  the document cannot be converted
    {"failed": "OSError: [Errno 28] ..."}   the worker itself went wrong

``pages`` comes first, then one ``page`` per page in order, then ``done``; or
``refused`` or ``failed`` at any point, after which the worker exits. A task
without an output file only opens the document and reports ``pages``.

The text file holds the pages in order, :data:`PAGE_SEPARATOR` between two
of them, lines ending in ``\\n``. The same :func:`work` runs in-process in
``bench/convert.py``, as the baseline the worker is measured against.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, TypeAlias

__all__ = ["PAGE_SEPARATOR", "Refused", "Task", "keep_freed_memory", "run", "work"]

Report: TypeAlias = Callable[[dict[str, Any]], None]

# Between two pages: a form feed, the classic page break of plain text (what
# pdftotext writes), and a newline so that each page starts on a line of its
# own. The pages' text never holds a form feed, so splitting on this gives
# the pages back.
PAGE_SEPARATOR: Final = "\f\n"

# PDF readers, PDFium among them, accept a header anywhere in the first
# kilobyte, after junk such as a mail header; so this looks no further.
_HEADER_WINDOW = 1024

# A "failed" message is cut to this, so a freak exception text cannot swamp
# the pipe or the job's error.
_DETAIL_LIMIT = 500

# From <linux/prctl.h> and <malloc.h>.
_PR_SET_PDEATHSIG = 1
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# glibc's ceiling for the mmap threshold on 64-bit, and a trim threshold far
# above what a worker's heap reaches.
_MMAP_THRESHOLD = 32 * 2**20
_TRIM_THRESHOLD = 1 * 2**30

# The "hog" test fault: how fast it grows, and where it stops if nobody
# stops it first, so that a broken watcher cannot take the machine down.
_HOG_CHUNK = 16 * 2**20
_HOG_PAUSE = 0.005
_HOG_LIMIT = 2 * 2**30


@dataclass(frozen=True, slots=True)
class Task:
    """What one worker is to do, sent to it once there is a document for it."""

    path: str
    # Where the text goes; None only opens the document and counts its pages.
    output: str | None = None
    # A test hook, "hang" or "hog": see _misbehave. Never set in production.
    fault: str | None = None


class Refused(Exception):
    """The document cannot be converted, for a reason streamer.worker makes an error.

    ``kind`` is "not-a-pdf", "encrypted", "damaged", "empty" or "unreadable".
    """

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


def run(reports: Connection, tasks: Connection) -> None:
    """The child's entry point: wait for a task on ``tasks``, do it, report it.

    The worker is started before there is a task for it, so that a document
    need not wait for it to boot; it gets one task, or none if the server
    shuts down first, and exits.
    """
    # Ctrl-C in a terminal reaches the whole process group. The server decides
    # when its workers end, and ends them itself on the way out.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    keep_freed_memory()
    try:
        task = tasks.recv()
    except EOFError:
        return
    finally:
        tasks.close()
    assert isinstance(task, Task)

    report = _writer(reports.fileno())
    try:
        work(task, report)
        return
    except BrokenPipeError:
        # The server is gone, or gave up on this document: nobody to tell.
        return
    except Refused as refusal:
        message = {"refused": refusal.kind, "detail": refusal.detail}
    except Exception as exc:
        message = {"failed": f"{type(exc).__name__}: {exc}"[:_DETAIL_LIMIT]}
    with contextlib.suppress(BrokenPipeError):
        report(message)


def work(task: Task, report: Report) -> None:
    """Open the document, report its pages, and write its text if asked to."""
    # PDFium is loaded here rather than at the top, so that the server, which
    # imports this module to name the child's entry point, never loads it.
    # The fork server preloads it, so a child finds it already imported.
    import pypdfium2  # type: ignore[import-untyped]  # no type hints shipped

    document = _open(pypdfium2, task.path)
    try:
        pages = len(document)
        if task.output is None:
            if task.fault is not None:
                _misbehave(task.fault)
            report({"pages": pages})
            return
        report({"pages": pages})
        characters = _write_text(pypdfium2, document, pages, task, report)
        report({"done": characters})
    finally:
        document.close()


def _open(pdfium: Any, path: str) -> Any:
    """The document as a ``PdfDocument``; raises :class:`Refused` if it cannot be."""
    try:
        with open(path, "rb") as file:
            head = file.read(_HEADER_WINDOW)
    except OSError as exc:
        raise Refused("unreadable", exc.strerror or type(exc).__name__) from None
    if b"%PDF-" not in head:
        raise Refused("not-a-pdf")

    # The raw call rather than PdfDocument(path), which takes a document of no
    # pages for a failure to load and so cannot tell an empty PDF from a
    # broken one.
    raw = pdfium.raw
    handle = raw.FPDF_LoadDocument(os.fsencode(path) + b"\0", None)
    if not handle:
        code = raw.FPDF_GetLastError()
        if code in (raw.FPDF_ERR_PASSWORD, raw.FPDF_ERR_SECURITY):
            raise Refused("encrypted")
        if code == raw.FPDF_ERR_FILE:
            raise Refused("unreadable", "PDFium cannot open the file")
        raise Refused("damaged", "PDFium cannot parse it")
    document = pdfium.PdfDocument(handle)
    if len(document) < 1:
        document.close()
        raise Refused("empty")
    return document


def _write_text(
    pdfium: Any, document: Any, pages: int, task: Task, report: Report
) -> int:
    """Write every page's text to the task's output; the characters written."""
    assert task.output is not None
    output = Path(task.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    characters = 0
    with open(output, "w", encoding="utf-8", errors="replace", newline="") as out:
        for index in range(pages):
            text = _page_text(pdfium, document, index)
            if index:
                out.write(PAGE_SEPARATOR)
            out.write(text)
            characters += len(text)
            report({"page": index + 1})
            if index == 0 and task.fault is not None:
                _misbehave(task.fault)
    return characters


def _page_text(pdfium: Any, document: Any, index: int) -> str:
    """One page's text, with plain ``\\n`` line ends and no form feeds."""
    try:
        page = document[index]
    except pdfium.PdfiumError:
        raise Refused("damaged", f"page {index + 1} cannot be loaded") from None
    try:
        try:
            textpage = page.get_textpage()
        except pdfium.PdfiumError:
            raise Refused(
                "damaged", f"the text of page {index + 1} cannot be read"
            ) from None
        try:
            # Bounded by the page's box, which is what a reader shows, and
            # unlike get_text_range() not limited to the BMP.
            text: str = textpage.get_text_bounded()
        finally:
            textpage.close()
    finally:
        page.close()

    # PDFium ends lines with CRLF. A form feed in the text would read as a
    # page break, so it becomes a line break.
    return text.replace("\r\n", "\n").replace("\f", "\n")


def _writer(fd: int) -> Report:
    """A report function writing one JSON line per message to ``fd``."""

    def report(message: dict[str, Any]) -> None:
        page = message.get("page")
        if page is not None and len(message) == 1:
            # The same JSON as dumps() writes, for a twentieth of its time:
            # there is one of these a page, up to 1,000 a second.
            line = b'{"page":%d}\n' % page
        else:
            line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        data = memoryview(line)

        # A message under PIPE_BUF goes out in one write; a longer one may
        # take several, and the reader puts it back together by its newline.
        while data:
            data = data[os.write(fd, data) :]

    return report


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker once its parent process is gone.

    A server that is killed cannot end its workers, and one hung in PDFium
    would run on forever. The parent is the fork server, which exits with the
    server; under "spawn" it is the server's thread that started the worker,
    streamer._launcher's thread, which lives as long as the server.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def keep_freed_memory() -> None:
    """Make glibc keep freed memory for reuse instead of handing it back at once.

    PDFium's text pages take buffers of a few hundred KB, which glibc maps
    for each page and unmaps when the page closes, so every page costs some
    150 page faults: 29,000 for 200 dense pages, a fifth of the CPU time.
    A worker lives for one document and its exit frees everything, so it may
    as well keep what it freed; this takes the faults down to under 1,000
    and leaves the peak resident memory as it was, since the buffers are
    reused rather than added. A no-op where glibc's mallopt() is missing.
    """
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def _misbehave(fault: str) -> None:
    """Test hooks: "hang" sleeps for good; "hog" eats memory fast, then hangs."""
    if fault == "hog":
        hoard: list[bytes] = []

        # Filled, not merely allocated, so that the pages are resident; in
        # chunks with pauses, so that the growth between two of the parent's
        # checks stays in the low hundreds of MB.
        while len(hoard) * _HOG_CHUNK < _HOG_LIMIT:
            hoard.append(b"\x01" * _HOG_CHUNK)
            time.sleep(_HOG_PAUSE)
    while True:
        time.sleep(60)
