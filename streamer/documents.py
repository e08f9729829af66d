"""Uploaded documents: where they live on disk, and how an upload is received.

Everything is kept under one data directory: the uploads as
``documents/<document_id>.pdf`` and the converters' output under ``results/``.
The :class:`DocumentStore` only indexes and places files; the server keeps
its index in the store (:mod:`streamer.store`) and loads it back at start.

:func:`receive_upload` streams a ``multipart/form-data`` body to temporary
files beside the documents, never holding a file in memory, checks each file
and stores all of them or, if one is refused, none. Its refusals::

    UploadError                 (a StreamerError)
    ├── NotMultipart            the body is not multipart/form-data
    ├── MalformedUpload         no boundary, a broken part, a truncated body
    ├── NoFiles                 not one ``file`` field
    ├── TooManyFiles            more ``file`` fields than allowed
    ├── UploadTooLarge          too much besides the files' contents
    ├── FileTooLarge            one file over the size limit
    ├── DocumentRefused         one file is not a PDF PDFium can read
    └── UploadNotStored         the disk refused it: full, read-only

The client's filename is kept as metadata only, sanitized; files are named
after their generated ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import platformdirs
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .clock import Clock, SystemClock
from .errors import (
    ConverterCrashed,
    DamagedPdf,
    DocumentError,
    DocumentTimeout,
    DocumentUnreadable,
    EmptyPdf,
    EncryptedPdf,
    MemoryBudgetExceeded,
    NotAPdf,
    StreamerError,
)
from .pdf import inspect_pdf
from .store import DocumentRecord

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = [
    "DOCUMENT_ID",
    "FILE_FIELD",
    "Document",
    "DocumentNotFound",
    "DocumentRefused",
    "DocumentStore",
    "FileTooLarge",
    "MalformedUpload",
    "NoFiles",
    "NotMultipart",
    "TooManyFiles",
    "UploadError",
    "UploadLimits",
    "UploadNotStored",
    "UploadTooLarge",
    "receive_upload",
    "sanitize_filename",
]

logger = logging.getLogger("streamer.documents")

T = TypeVar("T")

DOCUMENT_ID = re.compile(r"doc-[0-9a-f]{32}")

#: The form field that carries files; others are read past and ignored.
FILE_FIELD = "file"

# A PDF's header may follow up to 1 KiB of junk, as readers tolerate.
_MAGIC = b"%PDF-"
_MAGIC_WINDOW = 1024
_MAX_FILENAME = 255

# -- documents ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Document:
    """An uploaded PDF: whose it is, what the client called it, where it lies."""

    document_id: str
    session_id: str
    #: The client's name for it, sanitized; never used as a path.
    filename: str
    size_bytes: int
    pages: int
    created_at: datetime
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "filename": self.filename,
            "size_bytes": self.size_bytes,
            "pages": self.pages,
        }

    def record(self) -> DocumentRecord:
        """The document as the store keeps it; its path follows from its id."""
        return DocumentRecord(
            document_id=self.document_id,
            session_id=self.session_id,
            filename=self.filename,
            size_bytes=self.size_bytes,
            pages=self.pages,
            created_at=self.created_at,
        )

    @classmethod
    def from_record(cls, record: DocumentRecord, path: Path) -> Document:
        return cls(
            document_id=record.document_id,
            session_id=record.session_id,
            filename=record.filename,
            size_bytes=record.size_bytes,
            pages=record.pages,
            created_at=record.created_at,
            path=path,
        )


class DocumentNotFound(StreamerError, LookupError):
    """No document has this id (it was never uploaded, or was removed)."""

    def __init__(self, document_id: str) -> None:
        super().__init__(f"no document {document_id[:64]}")
        self.document_id = document_id


class DocumentStore:
    """The uploaded documents and the results directory, under ``data_dir``.

    Directories are created on first use, so building a store (and an app)
    touches no disk.
    """

    def __init__(
        self, data_dir: Path | str | None = None, *, clock: Clock | None = None
    ) -> None:
        self.data_dir = (
            Path(data_dir)
            if data_dir is not None
            else platformdirs.user_data_path("streamer")
        )
        self.documents_dir = self.data_dir / "documents"
        self.results_dir = self.data_dir / "results"
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._documents: dict[str, Document] = {}

    def __len__(self) -> int:
        return len(self._documents)

    def path_for(self, document_id: str) -> Path:
        """Where the document with this id is kept."""
        return self.documents_dir / f"{document_id}.pdf"

    def add(self, document: Document) -> None:
        self._documents[document.document_id] = document

    def load(self, documents: Iterable[Document]) -> None:
        """Index documents read back from the store; a missing file is logged."""
        for document in documents:
            if not document.path.is_file():
                logger.warning(
                    "document %s has lost its file %s",
                    document.document_id,
                    document.path.name,
                )
            self._documents[document.document_id] = document

    def all(self) -> list[Document]:
        return list(self._documents.values())

    def remove_partial_files(self) -> int:
        """Delete the ``.part`` files of uploads and results a dead process left."""
        removed = 0
        for pattern, root in (
            (".upload-*.part", self.documents_dir),
            ("*/.*.part", self.results_dir),
        ):
            if not root.is_dir():
                continue
            for path in root.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def get(self, document_id: str) -> Document | None:
        return self._documents.get(document_id)

    def resolve(self, document_id: str) -> Path:
        """The file of a document, for converters; raises if there is none."""
        document = self._documents.get(document_id)
        if document is None:
            raise DocumentNotFound(document_id)
        return document.path

    def list_for_session(self, session_id: str) -> list[Document]:
        """The session's documents, oldest first."""
        return [d for d in self._documents.values() if d.session_id == session_id]

    def remove(self, document_id: str) -> Document:
        """Forget a document and delete its file."""
        document = self._documents.pop(document_id, None)
        if document is None:
            raise DocumentNotFound(document_id)
        document.path.unlink(missing_ok=True)
        return document

    def result_path(self, relative: str) -> Path | None:
        """A converter's output file, given relative to ``results_dir``.

        None if it does not exist, or if it would lie outside the directory:
        the name came from a converter, and is not trusted to stay inside.
        """
        root = self.results_dir.resolve()
        candidate = (root / relative).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate

    def ensure_dirs(self) -> None:
        # Private to the user: uploads are other people's documents.
        for directory in (self.documents_dir, self.results_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def sanitize_filename(raw: str | None, *, fallback: str = "document.pdf") -> str:
    """A client's filename made safe to show and to offer back for download.

    Directories (either separator) are dropped, then every character that is
    not printable (controls, NUL, bidirectional overrides, lone surrogates),
    then leading and trailing dots and spaces, so ``..`` becomes nothing.
    Long names are cut to 255 characters, keeping a short extension.
    """
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if ch.isprintable()).strip(" .")
    if not name:
        return fallback
    if len(name) > _MAX_FILENAME:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and len(extension) <= 16:
            name = stem[: _MAX_FILENAME - len(extension) - 1] + "." + extension
        else:
            name = name[:_MAX_FILENAME]
    return name


# -- refusals -----------------------------------------------------------------------


class UploadError(StreamerError):
    """An upload was refused; nothing of it was kept."""


class NotMultipart(UploadError):
    """The request's content type is not ``multipart/form-data``."""


class MalformedUpload(UploadError):
    """The multipart body cannot be parsed, or ended before its last boundary."""


class NoFiles(UploadError):
    """The body has no ``file`` field."""


class TooManyFiles(UploadError):
    """The body has more ``file`` fields than one upload may carry."""


class UploadTooLarge(UploadError):
    """Headers and other fields, besides the files' contents, are too large."""


class FileTooLarge(UploadError):
    """One file is larger than the per-file limit."""

    def __init__(self, filename: str, index: int, limit: int) -> None:
        super().__init__(
            f"{filename!r} (file {index + 1}) is larger than the limit of {limit} bytes"
        )
        self.filename = filename
        self.index = index
        self.limit = limit


class UploadNotStored(UploadError):
    """Writing the upload to disk failed; ``strerror`` says why."""

    def __init__(self, error: OSError) -> None:
        self.strerror = error.strerror or str(error)
        super().__init__(f"the upload could not be written: {self.strerror}")


class DocumentRefused(UploadError):
    """One file is not a PDF that can be converted; ``reason`` says why.

    ``kind`` is one of "not_a_pdf", "encrypted", "empty" and "unreadable".
    """

    def __init__(self, filename: str, index: int, kind: str, reason: str) -> None:
        super().__init__(f"{filename!r} (file {index + 1}) {reason}")
        self.filename = filename
        self.index = index
        self.kind = kind
        self.reason = reason


def _refusal(filename: str, index: int, error: Exception) -> DocumentRefused:
    """Why PDFium refused a file, in words that name neither paths nor temp files."""
    match error:
        case NotAPdf():
            kind, reason = "not_a_pdf", _NO_HEADER
        case EncryptedPdf():
            kind = "encrypted"
            reason = "is encrypted: password-protected PDFs cannot be converted"
        case EmptyPdf():
            kind, reason = "empty", "is a PDF with no pages"
        case DamagedPdf():
            kind, reason = "unreadable", f"is damaged: {error.detail}"
        case DocumentUnreadable():
            kind, reason = "unreadable", f"cannot be read: {error.reason}"
        case DocumentTimeout():
            kind, reason = "unreadable", "cannot be opened: PDFium took too long"
        case _:
            # A crash or a runaway while merely opening it: the file is the
            # likely cause, so it is refused rather than failing the request.
            kind, reason = "unreadable", "cannot be opened: PDFium gave up on it"
    return DocumentRefused(filename, index, kind, reason)


# Opening a file for its page count fails in these ways; each is the file's
# fault as far as an upload can tell.
_INSPECT_FAILURES = (
    DocumentError,
    DocumentTimeout,
    ConverterCrashed,
    MemoryBudgetExceeded,
)
_NO_HEADER = "is not a PDF: no '%PDF-' header in its first 1024 bytes"


# -- receiving ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """What one upload request may carry."""

    max_file_bytes: int
    max_files: int
    #: Part headers, other fields and framing, besides the files' contents.
    max_other_bytes: int = 1 << 20
    #: Seconds the child process that opens each PDF may take.
    inspect_timeout: float = 10.0


@dataclass(slots=True)
class _File:
    """One ``file`` field as it arrives: its temporary file and what was seen."""

    index: int
    filename: str
    temp: Path
    handle: IO[bytes] | None = None
    size: int = 0
    head: bytearray = field(default_factory=bytearray)
    checked: bool = False


class _Events:
    """Turns the parser's callbacks into a list of events, and does no I/O.

    The parser calls back in the middle of ``write``; the events are handled
    after it returns, where writing to disk can be awaited.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.ended = False
        self._headers: dict[str, str] = {}
        self._name = bytearray()
        self._value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def drain(self) -> list[tuple[str, Any]]:
        events, self.events = self.events, []
        return events

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        # Header bytes are Latin-1 on the wire; a UTF-8 filename inside is
        # decoded later, from the same bytes.
        name = self._name.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._name.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self.events.append(("part", self._headers))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.events.append(("data", data[start:end]))

    def _part_end(self) -> None:
        self.events.append(("end", None))

    def _end(self) -> None:
        self.ended = True


def _boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1")[:64] or "none"
        raise NotMultipart(f"uploads must be multipart/form-data, not {shown}")
    boundary = options.get(b"boundary", b"")
    if not boundary:
        raise MalformedUpload("the multipart content type has no boundary")
    return boundary


def _part_field(headers: dict[str, str]) -> tuple[str, str | None]:
    """A part's field name and, for a file, the filename the client gave."""
    disposition, options = parse_options_header(headers.get("content-disposition", ""))
    name = options.get(b"name")
    if disposition != b"form-data" or name is None:
        raise MalformedUpload("a part has no 'Content-Disposition: form-data; name'")
    filename = options.get(b"filename")
    return (
        name.decode("utf-8", errors="replace"),
        None if filename is None else filename.decode("utf-8", errors="replace"),
    )


class _Reception:
    """The files of one request, on their way to disk."""

    def __init__(self, store: DocumentStore, limits: UploadLimits) -> None:
        self.store = store
        self.limits = limits
        self.files: list[_File] = []
        self.file_bytes = 0
        self._current: _File | None = None

    async def handle(self, kind: str, value: Any) -> None:
        if kind == "part":
            name, filename = _part_field(value)
            if name == FILE_FIELD:
                await self._begin(filename)
        elif kind == "data" and self._current is not None:
            await self._write(self._current, value)
        elif kind == "end" and self._current is not None:
            current, self._current = self._current, None
            self._check_magic(current)
            assert current.handle is not None
            await _on_disk(current.handle.close)
            current.handle = None

    async def _begin(self, filename: str | None) -> None:
        if len(self.files) >= self.limits.max_files:
            raise TooManyFiles(f"an upload takes at most {self.limits.max_files} files")
        temp = self.store.documents_dir / f".upload-{secrets.token_hex(8)}.part"
        current = _File(len(self.files), sanitize_filename(filename), temp)

        # Listed before it is opened, so a failure to open leaves nothing
        # that cleanup does not know of.
        self.files.append(current)
        self._current = current
        current.handle = await _on_disk(_create, temp)

    async def _write(self, current: _File, data: bytes) -> None:
        if current.size + len(data) > self.limits.max_file_bytes:
            raise FileTooLarge(
                current.filename, current.index, self.limits.max_file_bytes
            )
        current.size += len(data)
        self.file_bytes += len(data)
        if len(current.head) < _MAGIC_WINDOW:
            current.head += data[: _MAGIC_WINDOW - len(current.head)]
            if len(current.head) >= _MAGIC_WINDOW:
                # Refused here, before a non-PDF of any size reaches the disk.
                self._check_magic(current)
        assert current.handle is not None
        await _on_disk(current.handle.write, data)

    def _check_magic(self, current: _File) -> None:
        if current.checked:
            return
        current.checked = True
        if current.size == 0:
            raise DocumentRefused(
                current.filename, current.index, "not_a_pdf", "is empty: 0 bytes"
            )
        if _MAGIC not in current.head:
            raise DocumentRefused(
                current.filename, current.index, "not_a_pdf", _NO_HEADER
            )

    async def inspect(self) -> list[int]:
        """Each file's page count, as PDFium reads it in a child process."""
        pages = []
        for current in self.files:
            try:
                info = await inspect_pdf(
                    current.temp, timeout=self.limits.inspect_timeout
                )
            except _INSPECT_FAILURES as exc:
                raise _refusal(current.filename, current.index, exc) from exc
            pages.append(info.pages)
        return pages

    async def discard(self) -> None:
        for current in self.files:
            if current.handle is not None:
                await asyncio.to_thread(current.handle.close)
                current.handle = None
            with contextlib.suppress(OSError):
                current.temp.unlink(missing_ok=True)


async def _on_disk(work: Callable[..., T], *args: Any) -> T:
    """Run a file operation off the loop; the disk's refusal is an UploadError.

    Only these calls touch the disk, so an OSError of the request's own body
    (a client gone) is not mistaken for a full disk.
    """
    try:
        return await asyncio.to_thread(work, *args)
    except OSError as exc:
        raise UploadNotStored(exc) from exc


def _create(path: Path) -> IO[bytes]:
    # O_EXCL: a random name that already exists is never written through.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(descriptor, "wb")


async def receive_upload(
    store: DocumentStore,
    session_id: str,
    content_type: str | None,
    body: AsyncIterator[bytes],
    limits: UploadLimits,
) -> list[Document]:
    """Receive every ``file`` field of a multipart body into ``store``.

    All or nothing: on any refusal (or cancellation) every temporary file is
    deleted and the store is left as it was.
    """
    boundary = _boundary(content_type)
    parser_events = _Events()
    try:
        parser = MultipartParser(boundary, parser_events.callbacks())
    except FormParserError as exc:
        raise MalformedUpload(f"unusable multipart boundary: {exc}") from None

    store.ensure_dirs()
    reception = _Reception(store, limits)
    try:
        received = 0
        async for chunk in body:
            received += len(chunk)
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise MalformedUpload(
                    f"the multipart body is malformed: {exc}"
                ) from None
            for kind, value in parser_events.drain():
                await reception.handle(kind, value)
            if received - reception.file_bytes > limits.max_other_bytes:
                raise UploadTooLarge(
                    f"the upload carries more than {limits.max_other_bytes} bytes"
                    " besides its files"
                )

        if not parser_events.ended:
            raise MalformedUpload("the body ends before the closing multipart boundary")
        if not reception.files:
            raise NoFiles(f"the upload has no {FILE_FIELD!r} field")
        pages = await reception.inspect()
        try:
            documents = _commit(store, session_id, reception.files, pages)
        except OSError as exc:
            raise UploadNotStored(exc) from exc
    except BaseException:
        await reception.discard()
        raise

    logger.info(
        "session %s uploaded %d documents, %d bytes",
        session_id,
        len(documents),
        reception.file_bytes,
    )
    return documents


def _commit(
    store: DocumentStore, session_id: str, files: list[_File], pages: list[int]
) -> list[Document]:
    """Move every temporary file into place, then index them all."""
    documents: list[Document] = []
    try:
        for current, count in zip(files, pages, strict=True):
            document_id = f"doc-{secrets.token_hex(16)}"
            path = store.path_for(document_id)
            os.replace(current.temp, path)
            documents.append(
                Document(
                    document_id=document_id,
                    session_id=session_id,
                    filename=current.filename,
                    size_bytes=current.size,
                    pages=count,
                    created_at=store.clock.now(),
                    path=path,
                )
            )
    except OSError:
        # Whatever was moved goes too: the request stores all or nothing.
        for document in documents:
            document.path.unlink(missing_ok=True)
        raise
    for document in documents:
        store.add(document)
    return documents
