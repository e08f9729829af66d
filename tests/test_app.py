"""The REST layer: sessions, jobs and health, and every way a request can be wrong."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from starlette.applications import Starlette

from streamer import JobManager, JobStatus, ManualClock
from streamer.app import create_app
from streamer.sessions import SESSION_ID
from streamer.tokens import mint_token, verify_token

from .conftest import TIMEOUT, Recorder
from .helpers import Controlled

Build = Callable[..., JobManager]

SECRET = b"a secret shared with the host app"

OUTCOME_KEYS = {"document_id", "status", "error", "duration_seconds", "result"}


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


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def open_session(http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """A new session's id and the headers that authorize it."""
    response = await http.post("/api/sessions")
    assert response.status_code == 201
    body = response.json()
    return body["session_id"], bearer(body["token"])


async def post_job(
    http: httpx.AsyncClient, session_id: str, auth: dict[str, str], *ids: str
) -> dict[str, Any]:
    response = await http.post(
        f"/api/sessions/{session_id}/jobs",
        json={"document_ids": list(ids)},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """Check an error response's status and shape; return its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body.keys() == {"error"}
    assert body["error"].keys() == {"code", "message"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


# -- sessions -----------------------------------------------------------------------


async def test_app_create_session_returns_id_token_and_expiry(
    make_manager: Build, clock: ManualClock
) -> None:
    """POST /api/sessions answers 201 with a valid id, its token and its expiry."""
    app = create_app(make_manager(), secret=SECRET, token_ttl=600.0)
    async with client(app) as http:
        response = await http.post("/api/sessions")

    assert response.status_code == 201
    body = response.json()
    assert body.keys() == {"session_id", "token", "expires_at"}
    assert SESSION_ID.fullmatch(body["session_id"])
    claims = verify_token(SECRET, body["token"], session_id=body["session_id"])
    assert claims.expires_at - claims.issued_at >= 600
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert expires_at == clock.now() + timedelta(seconds=600)


async def test_app_create_session_ids_differ(make_manager: Build) -> None:
    """Two sessions never share an id or a token."""
    async with client(create_app(make_manager())) as http:
        first = (await http.post("/api/sessions")).json()
        second = (await http.post("/api/sessions")).json()

    assert first["session_id"] != second["session_id"]
    assert first["token"] != second["token"]


async def test_app_create_session_needs_admin_key(make_manager: Build) -> None:
    """With an admin key set, only a request bearing it creates a session."""
    app = create_app(make_manager(), admin_key="let-me-in")
    async with client(app) as http:
        missing = await http.post("/api/sessions")
        wrong = await http.post("/api/sessions", headers=bearer("let-me-out"))
        other_scheme = await http.post(
            "/api/sessions", headers={"Authorization": "Basic let-me-in"}
        )
        right = await http.post("/api/sessions", headers=bearer("let-me-in"))

        assert len(app.state.streamer.sessions) == 1

    for refused in (missing, wrong, other_scheme):
        assert_error(refused, 401, "admin_key_required")
    assert right.status_code == 201


async def test_app_create_session_refused_past_max_sessions(
    make_manager: Build,
) -> None:
    """Past max_sessions, creating a session answers 503 too_many_sessions."""
    app = create_app(make_manager(), max_sessions=2)
    async with client(app) as http:
        created = [await http.post("/api/sessions") for _ in range(2)]
        refused = await http.post("/api/sessions")

    assert [r.status_code for r in created] == [201, 201]
    assert_error(refused, 503, "too_many_sessions")


async def test_app_host_minted_token_makes_session_known(make_manager: Build) -> None:
    """A token the host minted with the shared secret opens a session never created."""
    app = create_app(make_manager(), converter=Controlled(), secret=SECRET)
    server = app.state.streamer
    auth = bearer(mint_token(SECRET, "host-user-42"))
    async with client(app) as http:
        assert "host-user-42" not in server.sessions
        listed = await http.get("/api/sessions/host-user-42/jobs", headers=auth)

        assert listed.status_code == 200
        assert listed.json() == {"jobs": []}
        assert "host-user-42" in server.sessions
        job = await post_job(http, "host-user-42", auth, "a")

    assert job["session_id"] == "host-user-42"


async def test_app_host_minted_token_refused_past_max_sessions(
    make_manager: Build,
) -> None:
    """A host-minted token for a new session gets 503 once the server is full."""
    app = create_app(make_manager(), secret=SECRET, max_sessions=1)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        refused = await http.get(
            "/api/sessions/host-1/jobs", headers=bearer(mint_token(SECRET, "host-1"))
        )
        known = await http.get(f"/api/sessions/{session_id}/jobs", headers=auth)

    assert_error(refused, 503, "too_many_sessions")
    assert known.status_code == 200


# -- tokens -------------------------------------------------------------------------


async def test_app_token_in_query_or_bearer_header_works(make_manager: Build) -> None:
    """The token is taken from 'Authorization: Bearer' or from ?token=."""
    async with client(create_app(make_manager())) as http:
        response = await http.post("/api/sessions")
        session_id, token = response.json()["session_id"], response.json()["token"]
        url = f"/api/sessions/{session_id}/jobs"
        by_header = await http.get(url, headers=bearer(token))
        by_lowercase_scheme = await http.get(
            url, headers={"Authorization": f"bearer {token}"}
        )
        by_query = await http.get(url, params={"token": token})

    for response in (by_header, by_lowercase_scheme, by_query):
        assert response.status_code == 200
        assert response.json() == {"jobs": []}


async def test_app_missing_token_is_unauthorized(make_manager: Build) -> None:
    """Every session endpoint answers 401 token_missing to a request without one."""
    async with client(create_app(make_manager())) as http:
        session_id, _ = await open_session(http)
        base = f"/api/sessions/{session_id}/jobs"
        responses = [
            await http.post(base, json={"document_ids": ["a"]}),
            await http.get(base),
            await http.get(base, headers={"Authorization": "Bearer "}),
            await http.get(base, headers={"Authorization": "Basic dXNlcjpwdw=="}),
            await http.get(base, params={"token": ""}),
            await http.get(f"{base}/job-1"),
            await http.delete(f"{base}/job-1"),
            await http.post(f"{base}/job-1/cancel"),
        ]

    for response in responses:
        assert_error(response, 401, "token_missing")


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda sid: mint_token(b"another secret", sid), id="other-secret"),
        pytest.param(lambda sid: mint_token(SECRET, sid)[:-2] + "AA", id="bad-mac"),
        pytest.param(lambda sid: "st1.e30.e30", id="unsigned"),
        pytest.param(lambda sid: "not-a-token", id="garbage"),
        pytest.param(lambda sid: "st1." + "A" * 5000, id="huge"),
        pytest.param(lambda sid: "st1.é.é", id="non-ascii"),
    ],
)
async def test_app_forged_token_is_unauthorized(
    make_manager: Build, forge: Callable[[str], str]
) -> None:
    """A token not signed with the server's secret answers 401 token_invalid."""
    app = create_app(make_manager(), secret=SECRET)
    async with client(app) as http:
        session_id, _ = await open_session(http)
        response = await http.get(
            f"/api/sessions/{session_id}/jobs", params={"token": forge(session_id)}
        )

    assert_error(response, 401, "token_invalid")


async def test_app_expired_token_is_unauthorized(make_manager: Build) -> None:
    """A genuine token past its expiry answers 401 and says it is expired."""
    app = create_app(make_manager(), secret=SECRET)
    expired = mint_token(SECRET, "host-1", ttl=60, now=time.time() - 3600)
    async with client(app) as http:
        response = await http.get("/api/sessions/host-1/jobs", headers=bearer(expired))

        assert "host-1" not in app.state.streamer.sessions

    assert assert_error(response, 401, "token_invalid") == "the token is expired"


async def test_app_token_of_another_session_is_forbidden(make_manager: Build) -> None:
    """A genuine token used on another session's URL answers 403."""
    async with client(create_app(make_manager())) as http:
        mine, _ = await open_session(http)
        _, theirs = await open_session(http)
        response = await http.get(f"/api/sessions/{mine}/jobs", headers=theirs)

    assert_error(response, 403, "token_wrong_session")


@pytest.mark.parametrize(
    "session_id",
    ["%2E%2E", "a.b", "ses%00x", "a%20b", "%C3%A9", "x" * 65, "%3Cscript%3E"],
)
async def test_app_bad_session_id_is_not_found(
    make_manager: Build, session_id: str
) -> None:
    """A session id with characters no session has is 404, even with a valid token."""
    app = create_app(make_manager(), secret=SECRET)
    token = mint_token(SECRET, unquote(session_id))
    async with client(app) as http:
        response = await http.get(
            f"/api/sessions/{session_id}/jobs", headers=bearer(token)
        )

        assert len(app.state.streamer.sessions) == 0

    assert_error(response, 404, "session_not_found")


@pytest.mark.parametrize("path", ["..%2F..%2Fetc", "a%2Fb", "%2F"])
async def test_app_session_id_with_slash_matches_no_route(
    make_manager: Build, path: str
) -> None:
    """An escaped slash in the session id leaves no route to match: 404."""
    async with client(create_app(make_manager())) as http:
        response = await http.get(f"/api/sessions/{path}/jobs")

    assert_error(response, 404, "not_found")


# -- jobs ---------------------------------------------------------------------------


async def test_app_create_job_returns_job_with_documents(make_manager: Build) -> None:
    """POST jobs answers 201 with the started job and its documents, in order."""
    app = create_app(make_manager(), converter=Controlled())
    async with client(app) as http:
        session_id, auth = await open_session(http)
        response = await http.post(
            f"/api/sessions/{session_id}/jobs",
            json={"document_ids": ["b.pdf", "a.pdf"]},
            headers=auth,
        )

    assert response.status_code == 201
    job = response.json()
    assert job["job_id"].startswith("job-")
    assert job["session_id"] == session_id
    assert job["status"] == "running"
    assert job["files_total"] == 2
    assert job["files_completed"] == 0
    assert job["documents"] == [
        {
            "document_id": document_id,
            "status": "pending",
            "error": None,
            "duration_seconds": None,
            "result": None,
        }
        for document_id in ("b.pdf", "a.pdf")
    ]


async def test_app_get_job_reports_outcomes_in_job_order(make_manager: Build) -> None:
    """GET job lists every document's outcome in the order the job was given."""
    manager = make_manager()
    converter = Controlled()
    converter.fail["a"] = "broken page"
    for document_id in ("c", "a", "b"):
        converter.finish(document_id)
    app = create_app(manager, converter=converter)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        job_id = (await post_job(http, session_id, auth, "c", "a", "b"))["job_id"]
        await manager.wait_job(job_id)
        response = await http.get(
            f"/api/sessions/{session_id}/jobs/{job_id}", headers=auth
        )

    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "completed"
    assert (job["files_converted"], job["files_failed"]) == (2, 1)
    documents = job["documents"]
    assert all(d.keys() == OUTCOME_KEYS for d in documents)
    assert [d["document_id"] for d in documents] == ["c", "a", "b"]
    assert [d["status"] for d in documents] == ["converted", "failed", "converted"]
    assert documents[0]["result"] == {"document_id": "c", "pages": 3}
    assert documents[0]["error"] is None
    assert documents[1]["error"] == "RuntimeError: broken page"
    assert documents[1]["result"] is None
    assert all(isinstance(d["duration_seconds"], float) for d in documents)


async def test_app_list_jobs_shows_only_the_sessions_jobs(make_manager: Build) -> None:
    """GET jobs lists the session's own jobs, as summaries without documents."""
    app = create_app(make_manager(), converter=Controlled())
    async with client(app) as http:
        mine, my_auth = await open_session(http)
        theirs, their_auth = await open_session(http)
        first = await post_job(http, mine, my_auth, "a")
        second = await post_job(http, mine, my_auth, "b")
        await post_job(http, theirs, their_auth, "c")
        response = await http.get(f"/api/sessions/{mine}/jobs", headers=my_auth)

    assert response.status_code == 200
    jobs = response.json()["jobs"]
    assert [j["job_id"] for j in jobs] == [first["job_id"], second["job_id"]]
    assert all("documents" not in j and j["session_id"] == mine for j in jobs)


async def test_app_cancel_job_ends_it_cancelled(make_manager: Build) -> None:
    """POST cancel on a running job answers 200 with the job cancelled."""
    converter = Controlled()
    app = create_app(make_manager(), converter=converter)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        job_id = (await post_job(http, session_id, auth, "a", "b"))["job_id"]
        await converter.wait_started("a")
        url = f"/api/sessions/{session_id}/jobs/{job_id}"
        response = await http.post(f"{url}/cancel", headers=auth)
        again = await http.post(f"{url}/cancel", headers=auth)
        after = await http.get(url, headers=auth)

    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "cancelled"
    assert [d["status"] for d in job["documents"]] == ["cancelled", "pending"]
    assert converter.cleaned == ["a"]
    assert assert_error(again, 409, "job_finished").endswith("cancelled")
    assert after.json()["status"] == "cancelled"


async def test_app_cancel_finished_job_conflicts(make_manager: Build) -> None:
    """POST cancel on a completed job answers 409 job_finished and changes nothing."""
    manager = make_manager()
    converter = Controlled()
    converter.finish("a")
    app = create_app(manager, converter=converter)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        job_id = (await post_job(http, session_id, auth, "a"))["job_id"]
        await manager.wait_job(job_id)
        response = await http.post(
            f"/api/sessions/{session_id}/jobs/{job_id}/cancel", headers=auth
        )

    assert assert_error(response, 409, "job_finished").endswith("completed")
    job = manager.get_job(job_id)
    assert job is not None and job.status is JobStatus.COMPLETED


async def test_app_delete_finished_job_removes_it(
    make_manager: Build, recorder: Recorder
) -> None:
    """DELETE on a finished job answers 204; the job is gone and job.removed sent."""
    manager = make_manager()
    converter = Controlled()
    converter.finish("a")
    app = create_app(manager, converter=converter)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        job_id = (await post_job(http, session_id, auth, "a"))["job_id"]
        await manager.wait_job(job_id)
        url = f"/api/sessions/{session_id}/jobs/{job_id}"
        deleted = await http.delete(url, headers=auth)
        fetched = await http.get(url, headers=auth)
        listed = await http.get(f"/api/sessions/{session_id}/jobs", headers=auth)
        cancelled = await http.post(f"{url}/cancel", headers=auth)
        deleted_again = await http.delete(url, headers=auth)

    assert deleted.status_code == 204
    assert deleted.content == b""
    assert manager.get_job(job_id) is None
    assert recorder.types(job_id)[-1] == "job.removed"
    assert_error(fetched, 404, "job_not_found")
    assert listed.json() == {"jobs": []}
    assert_error(cancelled, 404, "job_not_found")
    assert_error(deleted_again, 404, "job_not_found")


async def test_app_delete_running_job_conflicts(
    make_manager: Build, recorder: Recorder
) -> None:
    """DELETE on a running job answers 409 job_active and leaves the job running."""
    manager = make_manager()
    converter = Controlled()
    app = create_app(manager, converter=converter)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        job_id = (await post_job(http, session_id, auth, "a"))["job_id"]
        await converter.wait_started("a")
        url = f"/api/sessions/{session_id}/jobs/{job_id}"
        refused = await http.delete(url, headers=auth)
        fetched = await http.get(url, headers=auth)
        await http.post(f"{url}/cancel", headers=auth)
        deleted = await http.delete(url, headers=auth)

    assert "cancel it" in assert_error(refused, 409, "job_active")
    assert fetched.json()["status"] == "running"
    assert deleted.status_code == 204
    assert recorder.types(job_id).count("job.removed") == 1


async def test_app_unknown_job_is_not_found(make_manager: Build) -> None:
    """GET, DELETE and cancel of a job id that never existed answer 404."""
    async with client(create_app(make_manager())) as http:
        session_id, auth = await open_session(http)
        base = f"/api/sessions/{session_id}/jobs"
        huge = "job-" + "x" * 10_000
        responses = [
            await http.get(f"{base}/job-missing", headers=auth),
            await http.delete(f"{base}/job-missing", headers=auth),
            await http.post(f"{base}/job-missing/cancel", headers=auth),
            await http.get(f"{base}/{huge}", headers=auth),
        ]

    for response in responses:
        message = assert_error(response, 404, "job_not_found")
        assert len(message) < 200


async def test_app_other_sessions_job_is_not_found(make_manager: Build) -> None:
    """Another session's job is 404 to every endpoint, never 403, and is untouched."""
    manager = make_manager()
    converter = Controlled()
    app = create_app(manager, converter=converter)
    async with client(app) as http:
        owner, owner_auth = await open_session(http)
        job_id = (await post_job(http, owner, owner_auth, "a"))["job_id"]
        await converter.wait_started("a")
        stranger, stranger_auth = await open_session(http)
        url = f"/api/sessions/{stranger}/jobs/{job_id}"
        responses = [
            await http.get(url, headers=stranger_auth),
            await http.post(f"{url}/cancel", headers=stranger_auth),
            await http.delete(url, headers=stranger_auth),
        ]
        owned = await http.get(
            f"/api/sessions/{owner}/jobs/{job_id}", headers=owner_auth
        )

    for response in responses:
        assert_error(response, 404, "job_not_found")
    assert owned.json()["status"] == "running"


# -- request bodies -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b"", "bad_request", id="empty"),
        pytest.param(b"not json", "invalid_json", id="text"),
        pytest.param(b'{"document_ids": ["a"]', "invalid_json", id="truncated"),
        pytest.param(b"\xff\xfe\x00", "invalid_json", id="not-utf8"),
        pytest.param(b"[" * 100_000, "invalid_json", id="deeply-nested"),
    ],
)
async def test_app_create_job_refuses_body_that_is_not_json(
    make_manager: Build, body: bytes, code: str
) -> None:
    """A body that does not parse as JSON answers 400 and creates no job."""
    manager = make_manager()
    async with client(create_app(manager, converter=Controlled())) as http:
        session_id, auth = await open_session(http)
        response = await http.post(
            f"/api/sessions/{session_id}/jobs", content=body, headers=auth
        )

    assert_error(response, 400, code)
    assert manager.list_jobs() == []


@pytest.mark.parametrize(
    "body",
    [
        [],
        ["a"],
        "a",
        7,
        None,
        {},
        {"documents": ["a"]},
        {"document_ids": None},
        {"document_ids": "a"},
        {"document_ids": []},
        {"document_ids": {"a": 1}},
    ],
)
async def test_app_create_job_refuses_json_that_is_not_a_job(
    make_manager: Build, body: Any
) -> None:
    """JSON that is not an object with a non-empty document_ids list answers 422."""
    manager = make_manager()
    async with client(create_app(manager, converter=Controlled())) as http:
        session_id, auth = await open_session(http)
        response = await http.post(
            f"/api/sessions/{session_id}/jobs",
            content=json.dumps(body).encode(),
            headers=auth,
        )

    assert_error(response, 422, "invalid_job")
    assert manager.list_jobs() == []


@pytest.mark.parametrize(
    "raw_id",
    [
        pytest.param("1", id="number"),
        pytest.param("null", id="null"),
        pytest.param("true", id="bool"),
        pytest.param('["a"]', id="list"),
        pytest.param('{"a": 1}', id="object"),
        pytest.param('""', id="empty"),
        pytest.param('"   "', id="blank"),
        pytest.param('"a\\nb"', id="newline"),
        pytest.param('"a\\u0000"', id="nul"),
        pytest.param('"\\ud800"', id="lone-surrogate"),
        pytest.param('"' + "x" * 257 + '"', id="too-long"),
    ],
)
async def test_app_create_job_refuses_bad_document_id(
    make_manager: Build, raw_id: str
) -> None:
    """A document id that is not a short printable string answers 422, naming it."""
    manager = make_manager()
    async with client(create_app(manager, converter=Controlled())) as http:
        session_id, auth = await open_session(http)
        response = await http.post(
            f"/api/sessions/{session_id}/jobs",
            content=f'{{"document_ids": ["ok", {raw_id}]}}'.encode(),
            headers=auth,
        )

    assert assert_error(response, 422, "invalid_document_id").startswith(
        "document_ids[1]"
    )
    assert manager.list_jobs() == []


async def test_app_create_job_takes_ids_up_to_the_limits(make_manager: Build) -> None:
    """Ids of exactly the longest length, and exactly the most documents, are taken."""
    app = create_app(
        make_manager(),
        converter=Controlled(),
        max_documents_per_job=3,
        max_document_id_length=8,
    )
    async with client(app) as http:
        session_id, auth = await open_session(http)
        job = await post_job(http, session_id, auth, "x" * 8, "é/../ü", "a b")

    assert [d["document_id"] for d in job["documents"]] == ["x" * 8, "é/../ü", "a b"]


async def test_app_create_job_refuses_too_many_documents(make_manager: Build) -> None:
    """One document past max_documents_per_job answers 422 too_many_documents."""
    manager = make_manager()
    app = create_app(manager, converter=Controlled(), max_documents_per_job=3)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        response = await http.post(
            f"/api/sessions/{session_id}/jobs",
            json={"document_ids": ["a", "b", "c", "d"]},
            headers=auth,
        )

    assert "not 4" in assert_error(response, 422, "too_many_documents")
    assert manager.list_jobs() == []


async def test_app_create_job_refuses_duplicate_ids(make_manager: Build) -> None:
    """The same document twice in one job answers 422 duplicate_document_id."""
    manager = make_manager()
    async with client(create_app(manager, converter=Controlled())) as http:
        session_id, auth = await open_session(http)
        response = await http.post(
            f"/api/sessions/{session_id}/jobs",
            json={"document_ids": ["a", "b", "a"]},
            headers=auth,
        )

    assert_error(response, 422, "duplicate_document_id")
    assert manager.list_jobs() == []


def job_body(size: int) -> bytes:
    """A valid job body of exactly ``size`` bytes."""
    head, tail = b'{"document_ids": ["', b'"]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_app_create_job_refuses_oversized_body_by_content_length(
    make_manager: Build,
) -> None:
    """A body declared larger than max_body_bytes answers 413 before it is read."""
    manager = make_manager()
    app = create_app(manager, converter=Controlled(), max_body_bytes=64)
    async with client(app) as http:
        session_id, auth = await open_session(http)
        url = f"/api/sessions/{session_id}/jobs"
        at_limit = await http.post(url, content=job_body(64), headers=auth)
        over = await http.post(url, content=job_body(65), headers=auth)
        declared_only = await http.post(
            url, content=b"{}", headers={**auth, "Content-Length": str(10**12)}
        )
        unparseable = await http.post(
            url, content=b"{}", headers={**auth, "Content-Length": "9" * 5000}
        )

    assert at_limit.status_code == 201
    for response in (over, declared_only, unparseable):
        assert "64 bytes" in assert_error(response, 413, "body_too_large")
    assert len(manager.list_jobs()) == 1


async def test_app_create_job_refuses_oversized_chunked_body(
    make_manager: Build,
) -> None:
    """A chunked body that grows past max_body_bytes answers 413 all the same."""
    manager = make_manager()
    app = create_app(manager, converter=Controlled(), max_body_bytes=64)
    pulled: list[bytes] = []

    async def chunks(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16):
            pulled.append(body[start : start + 16])
            yield pulled[-1]

    async with client(app) as http:
        session_id, auth = await open_session(http)
        url = f"/api/sessions/{session_id}/jobs"
        request = http.build_request("POST", url, content=chunks(job_body(64)))
        assert "content-length" not in request.headers
        request.headers.update(auth)
        at_limit = await http.send(request)
        pulled.clear()
        over = await http.post(url, content=chunks(job_body(4096)), headers=auth)

    # The server stops reading at the first chunk past the limit.
    assert len(pulled) == 5
    assert at_limit.status_code == 201
    assert "64 bytes" in assert_error(over, 413, "body_too_large")
    assert len(manager.list_jobs()) == 1


@pytest.mark.parametrize(
    "declared", [b"abc", b"-1", b"1.5", b"+2", b"0x10", b"\xb2", b" ", b"1 2"]
)
async def test_app_create_job_refuses_bad_content_length(
    make_manager: Build, declared: bytes
) -> None:
    """A Content-Length that is not a plain decimal number answers 400."""
    manager = make_manager()
    async with client(create_app(manager, converter=Controlled())) as http:
        session_id, auth = await open_session(http)
        response = await http.post(
            f"/api/sessions/{session_id}/jobs",
            content=b'{"document_ids": ["a"]}',
            headers={
                b"authorization": auth["Authorization"].encode(),
                b"content-length": declared,
            },
        )

    assert assert_error(response, 400, "bad_request") == "invalid Content-Length"
    assert manager.list_jobs() == []


# -- routes and health --------------------------------------------------------------


async def test_app_serves_viewer_at_root(make_manager: Build) -> None:
    """The viewer's page is at "/" and its module beside it, as plain files."""
    async with client(create_app(make_manager())) as http:
        page = await http.get("/")
        module = await http.get("/streamer.js")
        wrong = await http.post("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>streamer</title>" in page.text
    assert module.status_code == 200
    assert module.headers["content-type"].startswith("text/javascript")
    assert_error(wrong, 405, "method_not_allowed")


async def test_app_unknown_route_is_not_found(make_manager: Build) -> None:
    """A path no route matches answers 404 in the API's error format."""
    async with client(create_app(make_manager())) as http:
        responses = [
            await http.get("/nope.html"),
            await http.get("/api"),
            await http.post("/api/sessions/ses-1/nope"),
            await http.get("/api/sessions/ses-1/jobs/job-1/cancel/more"),
        ]

    for response in responses:
        assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/sessions", {"POST"}),
        ("DELETE", "/healthz", {"GET", "HEAD"}),
        ("POST", "/metrics", {"GET", "HEAD"}),
        ("PUT", "/api/sessions/ses-1/jobs", {"GET", "HEAD", "POST"}),
        ("PATCH", "/api/sessions/ses-1/jobs/job-1", {"GET", "HEAD", "DELETE"}),
        ("GET", "/api/sessions/ses-1/jobs/job-1/cancel", {"POST"}),
    ],
)
async def test_app_wrong_method_is_not_allowed(
    make_manager: Build, method: str, path: str, allowed: set[str]
) -> None:
    """A known path with another method answers 405 and lists every allowed one."""
    async with client(create_app(make_manager())) as http:
        response = await http.request(method, path)

    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == allowed


async def test_app_head_is_answered_like_get(make_manager: Build) -> None:
    """HEAD on a GET endpoint answers as GET would, without a body."""
    async with client(create_app(make_manager())) as http:
        session_id, auth = await open_session(http)
        response = await http.head(f"/api/sessions/{session_id}/jobs", headers=auth)

    assert response.status_code == 200
    assert response.content == b""


async def test_app_healthz_reports_counts(make_manager: Build) -> None:
    """GET /healthz answers 200 with the status and the server's counts."""
    app = create_app(make_manager(), converter=Controlled())
    async with client(app) as http:
        empty = await http.get("/healthz")
        session_id, auth = await open_session(http)
        await post_job(http, session_id, auth, "a")
        busy = await http.get("/healthz")

    assert empty.status_code == 200
    store = {"ok": True, "pending": 0}
    assert empty.json() == {
        "status": "ok",
        "jobs": 0,
        "sessions": 0,
        "connections": 0,
        "store": store,
    }
    # The job's start may still be on its way to the store.
    assert busy.json() == {
        "status": "ok",
        "jobs": 1,
        "sessions": 1,
        "connections": 0,
        "store": {"ok": True, "pending": busy.json()["store"]["pending"]},
    }


async def test_app_healthz_reports_closing_after_close(make_manager: Build) -> None:
    """Once the server is closed, /healthz answers 503 closing."""
    app = create_app(make_manager())
    async with client(app) as http:
        await app.state.streamer.aclose()
        response = await http.get("/healthz")

    assert response.status_code == 503
    assert response.json()["status"] == "closing"
