// Reconnection against the real server: resume from the last cursor after a
// drop, no event applied twice, and a silent connection found dead.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Streamer, parseCursor } from "../../static/streamer.js";
import { FAST_BACKOFF, SocketControl, startServer, until, within } from "./support.mjs";

async function follow(t, server, options = {}) {
  const session = await server.session();
  const sockets = new SocketControl();
  const streamer = new Streamer({
    baseUrl: server.baseUrl,
    sessionId: session.session_id,
    token: session.token,
    WebSocket: sockets.WebSocket,
    EventSource: undefined,
    backoff: FAST_BACKOFF,
    ...options,
  });
  t.after(() => streamer.close());
  const seen = [];
  streamer.on("*", (message) => seen.push(message));
  streamer.connect();
  await until(streamer, () => streamer.state.status === "live", "live");
  return { streamer, sockets, seen };
}

function sequence(messages) {
  return messages.filter((m) => m.type.startsWith("job.")).map((m) => m.cursor);
}

test("after a drop the client resumes and gets exactly what it missed", async (t) => {
  const server = await startServer(t);
  const { streamer, sockets, seen } = await follow(t, server);
  const { job_id: jobId } = await streamer.api.createJob(["a.pdf", "b.pdf"]);
  await server.command("started", { document: "a.pdf", timeout: 5 });
  await until(streamer, () => streamer.job(jobId), "the job");

  // Held, the next connection waits, so the job ends while none is open.
  sockets.hold();
  const { dropped } = await server.command("drop");
  assert.ok(dropped >= 1);
  await until(streamer, () => streamer.state.status === "connecting", "a new attempt");
  await server.command("finish", { document: "a.pdf" });
  await server.command("finish", { document: "b.pdf" });
  await server.command("wait_job", { job_id: jobId, timeout: 5 });
  const before = seen.length;
  sockets.release();

  await until(
    streamer,
    () => streamer.job(jobId)?.job.status === "completed",
    "completion",
  );
  const after = seen.slice(before);
  assert.equal(after[0].type, "resumed", "the second connection resumed");
  assert.equal(after[0].replayed, after.length - 1, "exactly the missed events came");
  assert.equal(seen.filter((m) => m.type === "snapshot").length, 1);
  const cursors = sequence(seen);
  assert.equal(new Set(cursors).size, cursors.length, "no event was applied twice");

  const truth = await streamer.api.listJobs();
  assert.deepEqual(
    streamer.jobs.map((state) => state.job),
    truth,
  );
});

test("a message delivered twice is applied once", async (t) => {
  const server = await startServer(t);
  const { streamer, sockets, seen } = await follow(t, server);
  sockets.stutter = true;
  const { job_id: jobId } = await streamer.api.createJob(["a.pdf"]);
  await server.command("started", { document: "a.pdf", timeout: 5 });
  await server.command("finish", { document: "a.pdf" });
  await until(
    streamer,
    () => streamer.job(jobId)?.job.status === "completed",
    "completion",
  );

  const cursors = sequence(seen);
  assert.equal(new Set(cursors).size, cursors.length);
  assert.ok(cursors.length >= 4, `the job's events: ${cursors}`);
  const stats = streamer.statistics();
  assert.equal(stats.skipped, cursors.length, "every repeat was skipped");
});

test("a job listener hears each change of its job once, in order", async (t) => {
  const server = await startServer(t);
  const { streamer, sockets } = await follow(t, server);
  sockets.stutter = true;
  const { job_id: jobId } = await streamer.api.createJob(["a.pdf"]);
  const heard = [];
  streamer.onJob(jobId, (change) => heard.push(change.message));
  await server.command("started", { document: "a.pdf", timeout: 5 });
  await server.command("progress", { document: "a.pdf", value: 0.5 });
  await until(streamer, () => streamer.job(jobId)?.job.progress === 0.5, "progress");
  await server.command("finish", { document: "a.pdf" });
  await until(
    streamer,
    () => heard.some((m) => m?.type === "job.completed"),
    "completion",
  );

  const seqs = heard.map((m) => parseCursor(m.cursor).seq);
  assert.deepEqual(
    seqs,
    [...seqs].sort((a, b) => a - b),
  );
  assert.equal(new Set(seqs).size, seqs.length);
  assert.deepEqual(
    heard.slice(-2).map((m) => m.type),
    ["job.document_converted", "job.completed"],
  );
});

test("a connection that stops answering pings is dropped and resumed", async (t) => {
  const server = await startServer(t);
  const { streamer, sockets, seen } = await follow(t, server, { pingInterval: 100 });
  const states = [];
  streamer.onState((state) => states.push(state.status));

  sockets.muted = true;
  await until(
    streamer,
    () => states.includes("reconnecting"),
    "the dead connection found",
  );
  sockets.muted = false;
  await until(streamer, () => seen.some((m) => m.type === "resumed"), "a resume");
  assert.equal(streamer.state.status, "live");
  assert.ok(sockets.sockets.length >= 2);
});

test("the state tells the delay of the next attempt while reconnecting", async (t) => {
  const server = await startServer(t);
  const backoff = { initial: 1500, factor: 2, max: 3000, jitter: 0.5 };
  const { streamer } = await follow(t, server, { backoff, random: () => 0 });
  await server.command("drop");
  const state = await until(
    streamer,
    () => streamer.state.status === "reconnecting" && streamer.state,
    "reconnecting",
  );
  assert.equal(state.retryIn, 2);
  assert.ok(Math.abs(state.retryAt - Date.now() - 1500) < 500);
  assert.equal(state.attempt, 1);
  await within(
    until(streamer, () => streamer.state.status === "live", "live again"),
    "live again",
    2 * state.retryIn * 1000 + 5_000,
  );
});
