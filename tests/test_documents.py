"""Uploads, the document store, and results: every way an upload can be wrong."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import platformdirs
import pytest
from starlette.applications import Starlette

from streamer import JobManager
from streamer.app import Server, create_app
from streamer.documents import (
    DOCUMENT_ID,
    DocumentNotFound,
    DocumentStore,
    sanitize_filename,
)
from streamer.pdf import PAGE_SEPARATOR, PdfTextConverter

from . import pdfs
from .conftest import TIMEOUT
from .helpers import Controlled
from .test_openapi import check_documented

Build = Callable[..., JobManager]

BOUNDARY = "streamer-test-boundary"
DOCUMENTS = "/api/sessions/{session_id}/documents"
JOBS = "/api/sessions/{session_id}/jobs"
RESULT = "/api/sessions/{session_id}/jobs/{job_id}/documents/{document_id}/result"
PDF_HEAD = b"%PDF-1.4\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Where the test's PDFs are made."""
    path = tmp_path / "pdfs"
    path.mkdir()
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@contextlib.asynccontextmanager
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client wired straight to ``app``, which is closed afterwards."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", timeout=TIMEOUT
    ) as http:
        try:
            yield http
        finally:
            await app.state.streamer.aclose()


async def open_session(http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """A new session's id and the headers that authorize it."""
    body = (await http.post("/api/sessions")).json()
    return body["session_id"], {"Authorization": f"Bearer {body['token']}"}


def form(*files: tuple[str | bytes, bytes], field: str = "file") -> bytes:
    """A multipart body of ``files``, each a (filename, content) pair.

    Written by hand so that a test can send filenames a client library would
    escape or refuse.
    """
    body = bytearray()
    for filename, content in files:
        raw = filename.encode() if isinstance(filename, str) else filename
        body += f"--{BOUNDARY}\r\n".encode()
        body += b'Content-Disposition: form-data; name="%s"; filename="%s"\r\n' % (
            field.encode(),
            raw,
        )
        body += b"Content-Type: application/pdf\r\n\r\n" + content + b"\r\n"
    return bytes(body + f"--{BOUNDARY}--\r\n".encode())


def headers(auth: dict[str, str]) -> dict[str, str]:
    return {**auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def upload(
    http: httpx.AsyncClient,
    session_id: str,
    auth: dict[str, str],
    *files: tuple[str | bytes, bytes],
) -> httpx.Response:
    return await http.post(
        f"/api/sessions/{session_id}/documents",
        content=form(*files),
        headers=headers(auth),
    )


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """Check an error response's status and code; return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    return message


def stored_files(data_dir: Path) -> list[str]:
    """Every file under the data directory but the database, relative to it."""
    if not data_dir.exists():
        return []
    return sorted(
        str(path.relative_to(data_dir))
        for path in data_dir.rglob("*")
        if path.is_file() and not path.name.startswith("streamer.db")
    )


# -- the store and filenames --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\x\\y.pdf", "y.pdf"),
        ("a\x00b.pdf", "ab.pdf"),
        ("evil\x1b[31m.pdf", "evil[31m.pdf"),
        ("\u202efdp.exe", "fdp.exe"),
        ("  spaced.pdf  ", "spaced.pdf"),
        ("résumé 履歴書.pdf", "résumé 履歴書.pdf"),
        ("cafe\u0301.pdf", "café.pdf"),
        ("..", "document.pdf"),
        ("dir/", "document.pdf"),
        ("", "document.pdf"),
        (None, "document.pdf"),
        ("x" * 1000 + ".pdf", "x" * 251 + ".pdf"),
        ("y" * 1000, "y" * 255),
    ],
)
def test_documents_sanitize_filename(raw: str | None, expected: str) -> None:
    """Directories, invisible characters and excess length are taken out."""
    assert sanitize_filename(raw) == expected


def test_documents_store_touches_no_disk_until_an_upload(data_dir: Path) -> None:
    """Building a store or an app creates no directory; the default is the user's."""
    DocumentStore(data_dir)
    create_app(data_dir=data_dir)
    assert not data_dir.exists()
    assert DocumentStore().data_dir == platformdirs.user_data_path("streamer")


async def test_documents_store_remove_and_resolve(data_dir: Path, folder: Path) -> None:
    """remove() deletes the file; resolve() and remove() of an unknown id raise."""
    app = create_app(data_dir=data_dir)
    store: DocumentStore = app.state.streamer.documents
    async with client(app) as http:
        session_id, auth = await open_session(http)
        pdf = pdfs.text_pdf(folder, 2).read_bytes()
        response = await upload(http, session_id, auth, ("a.pdf", pdf))
    document_id = response.json()["documents"][0]["document_id"]

    path = store.resolve(document_id)
    assert path == data_dir / "documents" / f"{document_id}.pdf"
    assert path.read_bytes() == pdf
    assert store.remove(document_id).document_id == document_id
    assert not path.exists()
    assert store.get(document_id) is None
    for call in (store.resolve, store.remove):
        with pytest.raises(DocumentNotFound, match=document_id):
            call(document_id)


def test_documents_result_path_stays_inside_results(data_dir: Path) -> None:
    """Only existing files inside results/ are results; escapes come back None."""
    store = DocumentStore(data_dir)
    store.ensure_dirs()
    (store.results_dir / "doc").mkdir()
    (store.results_dir / "doc" / "a.txt").write_text("text")
    (data_dir / "secret.txt").write_text("not a result")
    (store.results_dir / "link.txt").symlink_to(data_dir / "secret.txt")

    assert store.result_path("doc/a.txt") == (store.results_dir / "doc/a.txt").resolve()
    for escape in ("../secret.txt", str(data_dir / "secret.txt"), "link.txt"):
        assert store.result_path(escape) is None
    assert store.result_path("doc/missing.txt") is None
    assert store.result_path("doc") is None


# -- uploading ----------------------------------------------------------------------


async def test_documents_upload_stores_pdfs_with_their_pages(
    data_dir: Path, folder: Path
) -> None:
    """Two PDFs in one upload answer 201 with ids, names, sizes and page counts."""
    report = pdfs.text_pdf(folder, 3, name="report.pdf").read_bytes()
    slides = pdfs.text_pdf(folder, 7, lines=20, name="slides.pdf").read_bytes()
    app = create_app(data_dir=data_dir)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        response = await upload(
            http, session_id, auth, ("report.pdf", report), ("slides.pdf", slides)
        )
        listed = await http.get(f"/api/sessions/{session_id}/documents", headers=auth)

    assert response.status_code == 201, response.text
    documents = response.json()["documents"]
    assert [(d["filename"], d["size_bytes"], d["pages"]) for d in documents] == [
        ("report.pdf", len(report), 3),
        ("slides.pdf", len(slides), 7),
    ]
    assert all(DOCUMENT_ID.fullmatch(d["document_id"]) for d in documents)
    assert listed.json() == {"documents": documents}
    assert stored_files(data_dir) == sorted(
        f"documents/{d['document_id']}.pdf" for d in documents
    )
    stored = data_dir / "documents" / f"{documents[1]['document_id']}.pdf"
    assert stored.read_bytes() == slides


async def test_documents_list_shows_only_the_sessions_documents(
    data_dir: Path, folder: Path
) -> None:
    """A session lists its own uploads, oldest first, and never another's."""
    pdf = pdfs.text_pdf(folder, 1).read_bytes()
    async with client(create_app(data_dir=data_dir)) as http:
        mine, my_auth = await open_session(http)
        theirs, their_auth = await open_session(http)
        first = await upload(http, mine, my_auth, ("first.pdf", pdf))
        await upload(http, theirs, their_auth, ("theirs.pdf", pdf))
        second = await upload(http, mine, my_auth, ("second.pdf", pdf))
        listed = await http.get(f"/api/sessions/{mine}/documents", headers=my_auth)

    names = [d["filename"] for d in listed.json()["documents"]]
    assert names == ["first.pdf", "second.pdf"]
    assert first.status_code == second.status_code == 201


@pytest.mark.parametrize(
    ("make", "code", "reason"),
    [
        (pdfs.not_a_pdf, "not_a_pdf", "no '%PDF-' header"),
        (pdfs.encrypted_pdf, "encrypted_pdf", "is encrypted"),
        (pdfs.damaged_pdf, "unreadable_pdf", "is damaged"),
        (pdfs.empty_pdf, "empty_pdf", "no pages"),
    ],
)
async def test_documents_upload_refuses_what_pdfium_cannot_read(
    data_dir: Path,
    folder: Path,
    make: Callable[[Path], Path],
    code: str,
    reason: str,
) -> None:
    """A bad file among good ones is refused by name, and nothing is stored."""
    good = pdfs.text_pdf(folder, 2).read_bytes()
    bad = make(folder).read_bytes()
    app = create_app(data_dir=data_dir)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        response = await upload(
            http, session_id, auth, ("good.pdf", good), ("bad one.pdf", bad)
        )

    message = assert_error(response, 422, code)
    assert message.startswith("'bad one.pdf' (file 2) ")
    assert reason in message
    assert str(data_dir) not in message and ".part" not in message
    assert len(app.state.streamer.documents) == 0
    assert stored_files(data_dir) == []


async def test_documents_upload_refuses_empty_file(data_dir: Path) -> None:
    """A file of no bytes at all is not a PDF."""
    async with client(create_app(data_dir=data_dir)) as http:
        session_id, auth = await open_session(http)
        response = await upload(http, session_id, auth, ("nothing.pdf", b""))

    assert "is empty" in assert_error(response, 422, "not_a_pdf")
    assert stored_files(data_dir) == []


async def test_documents_upload_refuses_a_header_past_the_first_kilobyte(
    data_dir: Path, folder: Path
) -> None:
    """Junk before the header is allowed up to 1 KiB, and not a byte more."""
    pdf = pdfs.text_pdf(folder, 1).read_bytes()
    async with client(create_app(data_dir=data_dir)) as http:
        session_id, auth = await open_session(http)
        near = await upload(http, session_id, auth, ("near.pdf", b"x" * 1000 + pdf))
        far = await upload(http, session_id, auth, ("far.pdf", b"x" * 1024 + pdf))

    assert near.status_code == 201, near.text
    assert near.json()["documents"][0]["pages"] == 1
    assert "'far.pdf'" in assert_error(far, 422, "not_a_pdf")


async def test_documents_upload_refuses_oversized_file(
    data_dir: Path, folder: Path
) -> None:
    """A file past max_file_bytes answers 413 by name and leaves nothing on disk."""
    small = pdfs.text_pdf(folder, 1).read_bytes()
    large = pdfs.text_pdf(folder, 40, lines=40).read_bytes()
    app = create_app(data_dir=data_dir, max_file_bytes=len(small) + 10)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        response = await upload(
            http, session_id, auth, ("small.pdf", small), ("large.pdf", large)
        )
        fits = await upload(http, session_id, auth, ("small.pdf", small))

    message = assert_error(response, 413, "file_too_large")
    assert message.startswith("'large.pdf' (file 2) is larger than")
    assert fits.status_code == 201
    document_id = fits.json()["documents"][0]["document_id"]
    assert stored_files(data_dir) == [f"documents/{document_id}.pdf"]


async def test_documents_upload_refuses_oversized_body(data_dir: Path) -> None:
    """A declared length past every limit, or too much besides files, is 413."""
    app = create_app(
        data_dir=data_dir,
        max_file_bytes=1000,
        max_files_per_upload=1,
        max_body_bytes=1000,
    )
    note = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=note\r\n\r\n"
        + "n" * 1500
        + f"\r\n--{BOUNDARY}--\r\n"
    ).encode()
    async with client(app) as http:
        session_id, auth = await open_session(http)
        declared = await upload(http, session_id, auth, ("a.pdf", b"%PDF-" * 500))

        async def chunks() -> AsyncIterator[bytes]:
            yield note

        # Streamed without a length, so only what arrives can be counted.
        besides = await http.post(
            f"/api/sessions/{session_id}/documents",
            content=chunks(),
            headers=headers(auth),
        )

    assert "exceeds 2000 bytes" in assert_error(declared, 413, "body_too_large")
    assert "besides its files" in assert_error(besides, 413, "body_too_large")
    assert stored_files(data_dir) == []


async def test_documents_upload_refuses_too_many_files(
    data_dir: Path, folder: Path
) -> None:
    """More file fields than max_files_per_upload answer 422 too_many_files."""
    pdf = pdfs.text_pdf(folder, 1).read_bytes()
    app = create_app(data_dir=data_dir, max_files_per_upload=2)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        response = await upload(
            http, session_id, auth, ("a.pdf", pdf), ("b.pdf", pdf), ("c.pdf", pdf)
        )

    assert "at most 2 files" in assert_error(response, 422, "too_many_files")
    assert stored_files(data_dir) == []


async def test_documents_upload_refuses_form_without_file_field(
    data_dir: Path, folder: Path
) -> None:
    """A form with other fields only, or files under another name, is no_files."""
    pdf = pdfs.text_pdf(folder, 1).read_bytes()
    note = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=note\r\n\r\n"
        f"hello\r\n--{BOUNDARY}--\r\n"
    ).encode()
    async with client(create_app(data_dir=data_dir)) as http:
        session_id, auth = await open_session(http)
        url = f"/api/sessions/{session_id}/documents"
        only_note = await http.post(url, content=note, headers=headers(auth))
        misnamed = await http.post(
            url, content=form(("a.pdf", pdf), field="files"), headers=headers(auth)
        )

    for response in (only_note, misnamed):
        assert "no 'file' field" in assert_error(response, 422, "no_files")
    assert stored_files(data_dir) == []


@pytest.mark.parametrize(
    ("content_type", "body", "says"),
    [
        ("multipart/form-data", b"", "no boundary"),
        (f"multipart/form-data; boundary={'b' * 300}", b"", "unusable"),
        (f"multipart/form-data; boundary={BOUNDARY}", b"garbage", "malformed"),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            b"--other\r\n\r\n--other--\r\n",
            "malformed",
        ),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            form(("a.pdf", PDF_HEAD))[:-30],
            "ends before the closing",
        ),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            f"--{BOUNDARY}\r\nX-Other: 1\r\n\r\ndata\r\n--{BOUNDARY}--\r\n".encode(),
            "Content-Disposition",
        ),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            f"--{BOUNDARY}\r\n{'X: y' * 2000}\r\n\r\n--{BOUNDARY}--\r\n".encode(),
            "malformed",
        ),
    ],
)
async def test_documents_upload_refuses_malformed_multipart(
    data_dir: Path, content_type: str, body: bytes, says: str
) -> None:
    """No boundary, a broken or cut body, a part without a name: invalid_multipart."""
    async with client(create_app(data_dir=data_dir)) as http:
        session_id, auth = await open_session(http)
        response = await http.post(
            f"/api/sessions/{session_id}/documents",
            content=body,
            headers={**auth, "Content-Type": content_type},
        )

    assert says in assert_error(response, 400, "invalid_multipart")
    assert stored_files(data_dir) == []


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/x-www-form-urlencoded", "text/plain"],
)
async def test_documents_upload_refuses_other_content_types(
    data_dir: Path, content_type: str | None
) -> None:
    """Anything but multipart/form-data answers 415 unsupported_media_type."""
    async with client(create_app(data_dir=data_dir)) as http:
        session_id, auth = await open_session(http)
        extra = {"Content-Type": content_type} if content_type else {}
        response = await http.post(
            f"/api/sessions/{session_id}/documents",
            content=b'{"file": "x"}',
            headers={**auth, **extra},
        )

    assert "multipart/form-data" in assert_error(
        response, 415, "unsupported_media_type"
    )


async def test_documents_upload_stores_hostile_names_under_ids_only(
    data_dir: Path, folder: Path
) -> None:
    """Filenames with paths, NULs, drives, length or Unicode are metadata only."""
    pdf = pdfs.text_pdf(folder, 1).read_bytes()
    hostile: list[str | bytes] = [
        "../../etc/passwd",
        "a\x00b.pdf",
        "C:\\x\\y.pdf",
        "n" * 1000 + ".pdf",
        "履歴書 résumé.pdf",
        b"\xff\xfe broken utf-8.pdf",
        "/absolute/path.pdf",
    ]
    async with client(create_app(data_dir=data_dir)) as http:
        session_id, auth = await open_session(http)
        response = await upload(http, session_id, auth, *((n, pdf) for n in hostile))

    assert response.status_code == 201, response.text
    documents = response.json()["documents"]
    assert [d["filename"] for d in documents] == [
        "passwd",
        "ab.pdf",
        "y.pdf",
        "n" * 251 + ".pdf",
        "履歴書 résumé.pdf",
        "\ufffd\ufffd broken utf-8.pdf",
        "path.pdf",
    ]
    assert stored_files(data_dir) == sorted(
        f"documents/{d['document_id']}.pdf" for d in documents
    )
    assert not (data_dir.parent / "etc").exists()


async def test_documents_upload_needs_the_sessions_token(
    data_dir: Path, folder: Path
) -> None:
    """Uploading and listing are authorized like every session route."""
    pdf = pdfs.text_pdf(folder, 1).read_bytes()
    async with client(create_app(data_dir=data_dir)) as http:
        session_id, _ = await open_session(http)
        _, other = await open_session(http)
        missing = await upload(http, session_id, {}, ("a.pdf", pdf))
        foreign = await upload(http, session_id, other, ("a.pdf", pdf))
        listed = await http.get(f"/api/sessions/{session_id}/documents")

    assert_error(missing, 401, "token_missing")
    assert_error(foreign, 403, "token_wrong_session")
    assert_error(listed, 401, "token_missing")
    assert stored_files(data_dir) == []


async def test_documents_upload_streams_to_disk_as_it_arrives(
    data_dir: Path, folder: Path
) -> None:
    """The first chunk is on disk before the second is sent, then moved in place."""
    pdf = pdfs.text_pdf(folder, 30, lines=40).read_bytes()
    body = form(("big.pdf", pdf))
    seen: list[int] = []

    def look() -> None:
        seen.extend(p.stat().st_size for p in data_dir.glob("documents/.upload-*"))

    async def chunks() -> AsyncIterator[bytes]:
        yield body[:20_000]
        look()
        yield body[20_000:]

    async with client(create_app(data_dir=data_dir)) as http:
        session_id, auth = await open_session(http)
        response = await http.post(
            f"/api/sessions/{session_id}/documents",
            content=chunks(),
            headers=headers(auth),
        )

    assert response.status_code == 201, response.text
    assert len(seen) == 1 and 15_000 < seen[0] <= 20_000
    document_id = response.json()["documents"][0]["document_id"]
    assert stored_files(data_dir) == [f"documents/{document_id}.pdf"]


async def test_documents_upload_broken_off_leaves_nothing(
    data_dir: Path, folder: Path
) -> None:
    """A body that fails halfway, or a client that leaves, leaves no file behind."""
    pdf = pdfs.text_pdf(folder, 30, lines=40).read_bytes()
    body = form(("big.pdf", pdf))
    app = create_app(data_dir=data_dir)

    async def failing() -> AsyncIterator[bytes]:
        yield body[:20_000]
        raise OSError("connection reset")

    async with client(app) as http:
        session_id, auth = await open_session(http)
        with pytest.raises(OSError, match="connection reset"):
            await http.post(
                f"/api/sessions/{session_id}/documents",
                content=failing(),
                headers=headers(auth),
            )
        assert stored_files(data_dir) == []

        # A client that leaves: the server's receive() says so, as uvicorn's does.
        messages = [
            {"type": "http.request", "body": body[:20_000], "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": f"/api/sessions/{session_id}/documents",
            "raw_path": f"/api/sessions/{session_id}/documents".encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (key.lower().encode(), value.encode())
                for key, value in headers(auth).items()
            ],
            "server": ("test", 80),
            "client": ("127.0.0.1", 1234),
            "state": {},
        }
        async with asyncio.timeout(TIMEOUT):
            await app(scope, receive, send)

    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_multipart"
    assert stored_files(data_dir) == []
    assert len(app.state.streamer.documents) == 0


# -- jobs of documents --------------------------------------------------------------


async def test_documents_job_refuses_another_sessions_document(
    data_dir: Path, folder: Path
) -> None:
    """Another session's upload is refused exactly like an id never issued."""
    pdf = pdfs.text_pdf(folder, 1).read_bytes()
    app = create_app(data_dir=data_dir)
    async with client(app) as http:
        owner, owner_auth = await open_session(http)
        thief, thief_auth = await open_session(http)
        uploaded = await upload(http, owner, owner_auth, ("private.pdf", pdf))
        document_id = uploaded.json()["documents"][0]["document_id"]
        never = "doc-" + "0" * 32
        answers = [
            await http.post(
                f"/api/sessions/{thief}/jobs",
                json={"document_ids": [ids]},
                headers=thief_auth,
            )
            for ids in (document_id, never)
        ]

    messages = [assert_error(a, 422, "unknown_document") for a in answers]
    assert messages[0].replace(document_id, never) == messages[1]
    assert app.state.streamer.manager.list_jobs() == []


async def test_documents_job_ids_depend_on_the_converter(
    data_dir: Path, make_manager: Build
) -> None:
    """The PDF converter takes uploads only; others take plain ids too."""
    pdf_app = create_app(data_dir=data_dir)
    any_app = create_app(make_manager(), converter=Controlled(), data_dir=data_dir)
    async with client(pdf_app) as pdf_http, client(any_app) as any_http:
        pdf_session, pdf_auth = await open_session(pdf_http)
        any_session, any_auth = await open_session(any_http)
        refused = await pdf_http.post(
            f"/api/sessions/{pdf_session}/jobs",
            json={"document_ids": ["report.pdf"]},
            headers=pdf_auth,
        )
        plain = await any_http.post(
            f"/api/sessions/{any_session}/jobs",
            json={"document_ids": ["report.pdf"]},
            headers=any_auth,
        )
        upload_like = await any_http.post(
            f"/api/sessions/{any_session}/jobs",
            json={"document_ids": ["report.pdf", "doc-" + "ab" * 16]},
            headers=any_auth,
        )

    assert assert_error(refused, 422, "unknown_document").startswith("document_ids[0]")
    assert plain.status_code == 201, plain.text
    assert assert_error(upload_like, 422, "unknown_document").startswith(
        "document_ids[1]"
    )


async def test_documents_full_flow_upload_convert_download(
    data_dir: Path, folder: Path
) -> None:
    """Upload, a job of the returned ids, then each document's text to download."""
    report = pdfs.text_pdf(folder, 3, name="report.pdf").read_bytes()
    résumé = pdfs.text_pdf(folder, 2, name="resume.pdf").read_bytes()
    app = create_app(data_dir=data_dir)
    server: Server = app.state.streamer
    async with client(app) as http:
        session_id, auth = await open_session(http)
        uploaded = await upload(
            http, session_id, auth, ("report.pdf", report), ("Résumé.PDF", résumé)
        )
        ids = [d["document_id"] for d in uploaded.json()["documents"]]
        created = await http.post(
            f"/api/sessions/{session_id}/jobs",
            json={"document_ids": ids},
            headers=auth,
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        async with asyncio.timeout(TIMEOUT * 4):
            job = await server.manager.wait_job(job_id)
        base = f"/api/sessions/{session_id}/jobs/{job_id}/documents"
        texts = [await http.get(f"{base}/{i}/result", headers=auth) for i in ids]
        head = await http.head(f"{base}/{ids[0]}/result", headers=auth)

    assert job.status.value == "completed", job.error
    assert [d.result and d.result["pages"] for d in job.documents] == [3, 2]

    # Each document reserved what the converter computed for its size and pages.
    converter = server.converter
    assert isinstance(converter, PdfTextConverter)
    assert server.manager.document_memory is not None
    assert server.manager.document_memory(job, ids[0]) == converter.memory_required(
        len(report), 3
    )
    for response, pages in zip(texts, (3, 2), strict=True):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text.count(PAGE_SEPARATOR) == pages - 1
        for number in range(1, pages + 1):
            assert pdfs.page_line(number, pages) in response.text
    assert (
        texts[0].headers["content-disposition"] == 'attachment; filename="report.txt"'
    )
    assert texts[1].headers["content-disposition"] == (
        "attachment; filename=\"R_sum_.txt\"; filename*=UTF-8''R%C3%A9sum%C3%A9.txt"
    )
    assert head.status_code == 200 and head.content == b""


async def test_documents_result_before_conversion_or_after_failure_conflicts(
    data_dir: Path, folder: Path, make_manager: Build
) -> None:
    """A result asked of a pending, converting or failed document answers 409."""
    pdf = pdfs.text_pdf(folder, 1).read_bytes()
    converter = Controlled()
    converter.fail["b.pdf"] = "the model ran out of patience"
    app = create_app(make_manager(), converter=converter, data_dir=data_dir)
    server: Server = app.state.streamer
    async with client(app) as http:
        session_id, auth = await open_session(http)
        uploaded = await upload(http, session_id, auth, ("a.pdf", pdf))
        document_id = uploaded.json()["documents"][0]["document_id"]
        created = await http.post(
            f"/api/sessions/{session_id}/jobs",
            json={"document_ids": [document_id, "b.pdf"]},
            headers=auth,
        )
        job_id = created.json()["job_id"]
        base = f"/api/sessions/{session_id}/jobs/{job_id}/documents"
        await converter.wait_started(document_id)
        converting = await http.get(f"{base}/{document_id}/result", headers=auth)
        pending = await http.get(f"{base}/b.pdf/result", headers=auth)
        converter.finish(document_id)
        converter.finish("b.pdf")
        async with asyncio.timeout(TIMEOUT):
            await server.manager.wait_job(job_id)
        failed = await http.get(f"{base}/b.pdf/result", headers=auth)
        textless = await http.get(f"{base}/{document_id}/result", headers=auth)
        absent = await http.get(f"{base}/c.pdf/result", headers=auth)
        no_job = await http.get(
            f"/api/sessions/{session_id}/jobs/job-missing/documents/b.pdf/result",
            headers=auth,
        )

    assert "is converting" in assert_error(converting, 409, "document_not_converted")
    assert "is pending" in assert_error(pending, 409, "document_not_converted")
    assert assert_error(failed, 409, "document_not_converted").endswith(
        "is failed: RuntimeError: the model ran out of patience"
    )
    assert "no text result" in assert_error(textless, 404, "result_not_found")
    assert "has no document c.pdf" in assert_error(absent, 404, "document_not_found")
    assert_error(no_job, 404, "job_not_found")


async def test_documents_result_outside_results_is_not_served(
    data_dir: Path, make_manager: Build
) -> None:
    """A converter's text_file that points out of results/ is never sent."""
    secret = data_dir / "secret.txt"

    async def escaping(document_id: str, progress: Callable[[float], None]) -> Any:
        return {"text_file": "../secret.txt"}

    manager = make_manager()
    app = create_app(manager, converter=escaping, data_dir=data_dir)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        app.state.streamer.documents.ensure_dirs()
        secret.write_text("not for clients")
        created = await http.post(
            f"/api/sessions/{session_id}/jobs",
            json={"document_ids": ["a"]},
            headers=auth,
        )
        job_id = created.json()["job_id"]
        async with asyncio.timeout(TIMEOUT):
            await manager.wait_job(job_id)
        response = await http.get(
            f"/api/sessions/{session_id}/jobs/{job_id}/documents/a/result",
            headers=auth,
        )

    assert_error(response, 404, "result_not_found")


async def test_documents_answers_are_documented(data_dir: Path, folder: Path) -> None:
    """Uploads, lists, results and their refusals answer as the OpenAPI says."""
    pdf = pdfs.text_pdf(folder, 2).read_bytes()
    app = create_app(data_dir=data_dir)
    server: Server = app.state.streamer
    async with client(app) as http:
        session_id, auth = await open_session(http)
        answers: list[tuple[str, str, httpx.Response]] = []

        async def call(method: str, template: str, **options: Any) -> httpx.Response:
            path = template.format(session_id=session_id, **options.pop("at", {}))
            response = await http.request(method, path, **options)
            answers.append((template, method.lower(), response))
            return response

        up = {"headers": headers(auth)}
        uploaded = await call("POST", DOCUMENTS, content=form(("a.pdf", pdf)), **up)
        await call("POST", DOCUMENTS, content=form(("b.pdf", b"nope")), **up)
        await call("POST", DOCUMENTS, content=b"x", headers=auth)
        await call("POST", DOCUMENTS, content=b"x", **up)
        await call("POST", DOCUMENTS, content=form(), **up)
        await call("GET", DOCUMENTS, headers=auth)
        await call("GET", DOCUMENTS)
        document_id = uploaded.json()["documents"][0]["document_id"]
        await call("POST", JOBS, json={"document_ids": ["plain"]}, headers=auth)
        created = await call(
            "POST", JOBS, json={"document_ids": [document_id]}, headers=auth
        )
        job_id = created.json()["job_id"]
        async with asyncio.timeout(TIMEOUT * 4):
            await server.manager.wait_job(job_id)
        for job, document in ((job_id, document_id), (job_id, "x"), ("job-x", "x")):
            at = {"job_id": job, "document_id": document}
            await call("GET", RESULT, at=at, headers=auth)

    statuses = [response.status_code for _, _, response in answers]
    assert statuses == [201, 422, 415, 400, 422, 200, 401, 422, 201, 200, 404, 404]
    for template, method, response in answers:
        check_documented(template, method, response)
