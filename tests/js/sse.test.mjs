// Server-Sent Events: the transport where a WebSocket is missing or cannot
// connect, with the same resume and refusal as the socket.

import assert from "node:assert/strict";
import { test } from "node:test";

import { EventSource } from "eventsource";

import { Streamer } from "../../static/streamer.js";
import { FAST_BACKOFF, startServer, until } from "./support.mjs";

function over(t, server, session, options) {
  const streamer = new Streamer({
    baseUrl: server.baseUrl,
    sessionId: session.session_id,
    token: session.token,
    EventSource,
    backoff: FAST_BACKOFF,
    ...options,
  });
  t.after(() => streamer.close());
  const seen = [];
  streamer.on("*", (message) => seen.push(message));
  streamer.connect();
  return { streamer, seen };
}

test("without a WebSocket the client follows over SSE, and resumes", async (t) => {
  const server = await startServer(t);
  const session = await server.session();
  const { streamer, seen } = over(t, server, session, { WebSocket: undefined });
  await until(streamer, () => streamer.state.status === "live", "live");
  assert.equal(streamer.state.transport, "sse");

  const { job_id: jobId } = await streamer.api.createJob(["a.pdf"]);
  await server.command("started", { document: "a.pdf", timeout: 5 });
  await until(
    streamer,
    () => streamer.job(jobId)?.job.current_file === "a.pdf",
    "start",
  );
  await server.command("drop");
  await server.command("finish", { document: "a.pdf" });
  await until(
    streamer,
    () => streamer.job(jobId)?.job.status === "completed",
    "completion",
  );

  assert.equal(seen.filter((m) => m.type === "snapshot").length, 1);
  assert.ok(
    seen.some((m) => m.type === "resumed"),
    "the new stream resumed",
  );
  const cursors = seen.filter((m) => m.type.startsWith("job.")).map((m) => m.cursor);
  assert.equal(new Set(cursors).size, cursors.length);
  assert.deepEqual(
    streamer.jobs.map((s) => s.job),
    await streamer.api.listJobs(),
  );
});

test("a WebSocket that never opens while HTTP works falls back to SSE", async (t) => {
  const server = await startServer(t);
  const session = await server.session();

  // What a proxy that drops upgrades looks like to a page: an error, a close.
  function Blocked() {
    const socket = { send() {}, close() {} };
    setTimeout(() => {
      socket.onerror?.({});
      socket.onclose?.({ code: 1006 });
    }, 0);
    return socket;
  }
  const { streamer } = over(t, server, session, { WebSocket: Blocked });
  await until(streamer, () => streamer.state.status === "live", "live");
  assert.equal(streamer.state.transport, "sse");
});

test("a bad token on SSE closes the client with the server's reason", async (t) => {
  const server = await startServer(t);
  const session = await server.session();
  const bad = { ...session, token: "st1.bad.token" };
  const { streamer } = over(t, server, bad, { transport: "sse" });
  await until(streamer, () => streamer.state.status === "closed", "the refusal");
  assert.equal(streamer.state.error.code, "token_invalid");
});
