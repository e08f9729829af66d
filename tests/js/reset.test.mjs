// A reset snapshot replaces all the client knows: after a server restart
// (a new epoch), and after missing more events than the replay buffer holds.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Streamer } from "../../static/streamer.js";
import { FAST_BACKOFF, SocketControl, startServer, until } from "./support.mjs";

async function follow(t, server, session) {
  const sockets = new SocketControl();
  const streamer = new Streamer({
    baseUrl: server.baseUrl,
    sessionId: session.session_id,
    token: session.token,
    WebSocket: sockets.WebSocket,
    EventSource: undefined,
    backoff: FAST_BACKOFF,
  });
  t.after(() => streamer.close());
  streamer.connect();
  await until(streamer, () => streamer.state.status === "live", "live");
  return { streamer, sockets };
}

test("after a restart the client holds exactly the new server's jobs", async (t) => {
  const server = await startServer(t);
  const session = await server.session();
  const { streamer } = await follow(t, server, session);
  const { job_id: oldJob } = await streamer.api.createJob(["a.pdf"]);
  await until(streamer, () => streamer.job(oldJob), "the first job");
  const cursor = streamer.cursor;
  const snapshots = [];
  streamer.on("snapshot", (message) => snapshots.push(message));
  const gone = [];
  streamer.onJob(oldJob, (change) => gone.push(change.state));

  // The new process knows nothing of the old job, and has one of its own.
  const { job_id: newJob } = await server.command("restart", {
    session: session.session_id,
    documents: ["n.pdf"],
  });
  await until(streamer, () => snapshots.length === 1, "the reset snapshot");

  assert.equal(snapshots[0].reset, true);
  assert.notEqual(snapshots[0].cursor.split("-")[0], cursor.split("-")[0]);
  assert.deepEqual(
    streamer.jobs.map((state) => state.job.job_id),
    [newJob],
  );
  assert.equal(gone.at(-1), null, "the old job's listener heard it go");
  assert.equal(streamer.cursor, snapshots[0].cursor);
  assert.deepEqual(
    streamer.jobs.map((state) => state.job),
    await streamer.api.listJobs(),
  );
});

test("a client away longer than the replay buffer gets a reset snapshot", async (t) => {
  const server = await startServer(t, ["--replay-size", "3"]);
  const session = await server.session();
  const { streamer, sockets } = await follow(t, server, session);
  const { job_id: jobId } = await streamer.api.createJob(["a.pdf", "b.pdf", "c.pdf"]);
  await until(streamer, () => streamer.job(jobId), "the job");
  const snapshots = [];
  streamer.on("snapshot", (message) => snapshots.push(message));

  sockets.hold();
  await server.command("drop");
  for (const document of ["a.pdf", "b.pdf", "c.pdf"]) {
    await server.command("started", { document, timeout: 5 });
    await server.command("finish", { document });
  }
  await server.command("wait_job", { job_id: jobId, timeout: 5 });
  sockets.release();

  await until(streamer, () => snapshots.length === 1, "the reset snapshot");
  assert.equal(snapshots[0].reset, true);
  assert.equal(streamer.job(jobId).job.status, "completed");
  assert.deepEqual(
    streamer.jobs.map((state) => state.job),
    await streamer.api.listJobs(),
  );
});

test("documents are loaded when a job shows up, and again when it ends", async (t) => {
  const server = await startServer(t);
  const session = await server.session();
  const streamer = new Streamer({
    baseUrl: server.baseUrl,
    sessionId: session.session_id,
    token: session.token,
    WebSocket: new SocketControl().WebSocket,
    backoff: FAST_BACKOFF,
    loadDocuments: true,
  });
  t.after(() => streamer.close());
  streamer.connect();
  await until(streamer, () => streamer.state.status === "live", "live");

  const { job_id: jobId } = await streamer.api.createJob(["a.pdf", "b.pdf"]);
  await until(streamer, () => streamer.job(jobId)?.detailed, "the documents");
  assert.deepEqual([...streamer.job(jobId).documents.keys()], ["a.pdf", "b.pdf"]);

  // A cancel ends the converting document without an event of its own.
  await server.command("started", { document: "a.pdf", timeout: 5 });
  await streamer.api.cancelJob(jobId);
  await until(
    streamer,
    () => streamer.job(jobId)?.documents.get("a.pdf").status === "cancelled",
    "the cancelled document",
  );
  assert.equal(streamer.job(jobId).documents.get("b.pdf").status, "pending");
});
