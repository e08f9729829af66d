"""Tests that keep docs/protocol.md and the code in step.

Every JSON example of the document is checked against messages the code
really produced: a job run through the engine and the hub (a memory wait, a
failed document, a cancel and a removal), and a real server's WebSocket and
SSE streams for the messages only the endpoints send.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from streamer import (
    ConversionJob,
    EventType,
    JobManager,
    ManualClock,
    StaticMemoryProbe,
    SystemClock,
)
from streamer.app import create_app
from streamer.events import JobSaveFailed
from streamer.hub import Hub
from streamer.memory import GIB
from streamer.openapi import OPENAPI

from .conftest import TIMEOUT, Recorder
from .helpers import Controlled
from .live import serve
from .test_openapi import error_codes_in_source, validator

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
WS_SOURCE = Path(__file__).resolve().parent.parent / "streamer" / "ws.py"
SESSION = "ses-protocol"

#: What the server sends besides events, and what it accepts from a client.
CONTROL_TYPES = {"snapshot", "resumed", "pong", "error", "closed"}
CLIENT_TYPES = {"ping"}
SENT_TYPES = {kind.value for kind in EventType} | CONTROL_TYPES

_JSON_BLOCK = re.compile(r"^```json\n(.*?)^```$", re.MULTILINE | re.DOTALL)

Message = dict[str, Any]


def doc_blocks() -> list[str]:
    return _JSON_BLOCK.findall(DOC.read_text(encoding="utf-8"))


def doc_messages() -> list[Message]:
    """The examples of the document that are messages: objects with a type."""
    examples = [json.loads(block) for block in doc_blocks()]
    return [e for e in examples if isinstance(e, dict) and "type" in e]


def key_paths(value: Any, base: str = "") -> set[str]:
    """Every key of a JSON value as a dotted path; list items share ``[]``."""
    found = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{base}.{key}" if base else key
            found.add(path)

            # What a converter returns is its own business, not the protocol's.
            if key != "result":
                found |= key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            found |= key_paths(item, base + "[]")
    return found


async def engine_messages(
    manager: JobManager,
    clock: ManualClock,
    probe: StaticMemoryProbe,
    recorder: Recorder,
) -> list[Message]:
    """Snapshots, resumes and every event type, from the engine and the hub."""
    converter = Controlled()
    hub = Hub(clock=clock)
    manager.subscribe(hub.publish)

    def snapshot() -> list[dict[str, Any]]:
        return [job.to_dict() for job in manager.list_jobs(SESSION)]

    def first(cursor: str | None = None) -> Message:
        with hub.subscribe(SESSION, cursor=cursor, snapshot=snapshot) as opened:
            data = opened.get_nowait()
        assert data is not None
        return dict(json.loads(data))

    client = hub.subscribe(SESSION, snapshot=snapshot)

    # Two documents after a memory wait: one converts, one fails.
    probe.available_bytes = 4 * GIB
    mixed = manager.create_job(SESSION, ["a.pdf", "b.pdf"])
    await manager.start_job(mixed, converter)
    await recorder.wait_type(EventType.MEMORY_WAIT.value, mixed)
    seen = [first()]
    probe.available_bytes = 24 * GIB
    await clock.advance(60)
    await converter.wait_started("a.pdf")
    converter.callbacks["a.pdf"](0.5)
    converter.fail["b.pdf"] = "unreadable"
    converter.finish("a.pdf")
    converter.finish("b.pdf")
    await manager.wait_job(mixed)

    # A job whose only document fails, and one cancelled while it converts.
    failed = manager.create_job(SESSION, ["c.pdf"])
    converter.fail["c.pdf"] = "broken"
    converter.finish("c.pdf")
    await manager.start_job(failed, converter)
    await manager.wait_job(failed)
    cancelled = manager.create_job(SESSION, ["d.pdf"])
    await manager.start_job(cancelled, converter)
    await converter.wait_started("d.pdf")
    seen.append(first())
    await manager.cancel_job(cancelled)
    manager.remove_job(failed)

    # A shutdown suspends a converting job; a new engine resumes it, and a
    # failed save is told on the job's stream.
    suspended = manager.create_job(SESSION, ["e.pdf", "f.pdf"])
    await manager.start_job(suspended, converter)
    await converter.wait_started("e.pdf")
    await manager.suspend(grace=0)
    stored = manager.get_job(suspended)
    assert stored is not None
    later = JobManager(clock=clock, memory_probe=probe, memory_required_gb=1)
    later.subscribe(hub.publish)
    later.restore(ConversionJob.from_record(stored.to_record()))
    await later.resume_job(suspended, converter, reason=stored.interrupted or "")
    later.report(
        JobSaveFailed,
        suspended,
        error="could not save to /var/lib/streamer/streamer.db: the disk is full",
    )
    await later.cancel_job(suspended)

    while (data := client.get_nowait()) is not None:
        seen.append(json.loads(data))
    client.close()

    # Three events back is inside the replay buffer; a foreign epoch is not.
    seen.append(first(cursor=seen[-3]["cursor"]))
    seen.append(first(cursor="0123456789abcdef-1"))
    return seen


async def stream_messages(manager: JobManager) -> list[Message]:
    """What only the endpoints send: pong, error replies, and SSE's closed."""
    seen: list[Message] = []
    async with serve(create_app(manager)) as live:
        session_id, token = await live.session()
        url = f"{live.ws_url}/api/sessions/{session_id}/ws?token={token}"
        async with connect(url, open_timeout=TIMEOUT, proxy=None) as client:
            async with asyncio.timeout(TIMEOUT):
                seen.append(json.loads(await client.recv()))
                for text in ('{"type": "ping"}', "not json", "[]", '{"type": "x"}'):
                    await client.send(text)
                    seen.append(json.loads(await client.recv()))

        # The client's ping counts as real once the server has answered it.
        assert seen[1] == {"type": "pong"}
        seen.append({"type": "ping"})

        path = f"/api/sessions/{session_id}/events"
        params = {"token": token}
        async with live.http.stream("GET", path, params=params) as response:
            lines = response.aiter_lines()
            async with asyncio.timeout(TIMEOUT):
                async for line in lines:
                    if not line:
                        break

                live.streamer.hub.close("shutdown")
                seen += [
                    json.loads(line[6:]) async for line in lines if line[:6] == "data: "
                ]
    return seen


@pytest.fixture
async def produced(
    make_manager: Callable[..., JobManager],
    clock: ManualClock,
    probe: StaticMemoryProbe,
    recorder: Recorder,
) -> dict[str, list[Message]]:
    """Real messages of every type, by type."""
    messages = await engine_messages(make_manager(), clock, probe, recorder)
    messages += await stream_messages(make_manager(clock=SystemClock()))
    by_type: dict[str, list[Message]] = {}
    for message in messages:
        by_type.setdefault(message["type"], []).append(message)
    return by_type


def test_protocol_examples_are_json() -> None:
    """Every json block of the document parses."""
    blocks = doc_blocks()
    assert len(blocks) > 30
    for number, block in enumerate(blocks, 1):
        try:
            json.loads(block)
        except json.JSONDecodeError as exc:
            pytest.fail(f"json block {number} of {DOC.name}: {exc}")


def test_protocol_examples_have_types_the_code_sends(
    produced: dict[str, list[Message]],
) -> None:
    """Each example's type is one the server sends or, for ping, accepts."""
    assert set(produced) == SENT_TYPES | CLIENT_TYPES
    for message in doc_messages():
        assert message["type"] in SENT_TYPES | CLIENT_TYPES, message["type"]


def test_protocol_examples_have_the_keys_the_code_sends(
    produced: dict[str, list[Message]],
) -> None:
    """Each example has the keys, nested ones too, of a real message of its type."""
    for example in doc_messages():
        kind = example["type"]
        real = produced[kind]
        assert set(example) == set(real[0]), kind

        shapes = [key_paths(message) for message in real]
        shape = key_paths(example)
        if shape not in shapes:
            closest = min(shapes, key=lambda other: len(other ^ shape))
            pytest.fail(
                f"{kind} example: not sent {sorted(shape - closest)},"
                f" missing {sorted(closest - shape)}"
            )


def test_protocol_examples_fit_the_openapi_schemas() -> None:
    """Jobs, documents and HTTP bodies in the examples validate as documented."""
    schema = {
        name: validator("components", "schemas", name)
        for name in OPENAPI["components"]["schemas"]
    }
    for example in (json.loads(block) for block in doc_blocks()):
        if "type" in example:
            for job in [example.get("job"), *example.get("jobs", ())]:
                if job is not None:
                    schema["Job"].validate(job)
            if "document" in example:
                schema["DocumentOutcome"].validate(example["document"])
            if example["type"] == EventType.MEMORY_WAIT.value:
                schema["MemoryStatus"].validate(example["memory"])
        elif set(example) == {"error"}:
            schema["Error"].validate(example)
        elif "token" in example:
            schema["Session"].validate(example)
        elif "connections" in example:
            schema["Health"].validate(example)
        elif "document_ids" in example:
            schema["CreateJob"].validate(example)
        elif set(example) == {"jobs"}:
            schema["JobList"].validate(example)
        else:
            schema["JobDetail"].validate(example)


def test_protocol_documents_every_message_type() -> None:
    """Each event type and each control message has an example."""
    documented = {message["type"] for message in doc_messages()}
    assert documented >= SENT_TYPES | CLIENT_TYPES


def test_protocol_documents_every_error_code() -> None:
    """Every error code in the HTTP and stream layers is named in the document."""
    text = DOC.read_text(encoding="utf-8")
    codes = error_codes_in_source()
    assert {"rate_limited", "not_found", "token_missing"} <= codes
    # Named in code style, alone or after its status, or as a JSON string.
    missing = {
        code
        for code in codes
        if not re.search(rf'`(?:\d{{3}} )?{code}`|"{code}"', text)
    }
    assert not missing


def test_protocol_documents_every_close_code() -> None:
    """Every close code of the WebSocket endpoint has a row in the document."""
    source = WS_SOURCE.read_text(encoding="utf-8")
    codes = set(re.findall(r"^CLOSE_\w+ = (\d{4})$", source, re.MULTILINE))
    codes |= set(re.findall(r"_close\(websocket, (\d{4}),", source))
    text = DOC.read_text(encoding="utf-8")
    assert len(codes) >= 6
    assert {code for code in codes if f"\n| {code} |" not in text} == set()
