// The viewer's words for jobs, memory waits and the connection.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  announcement,
  connectionLine,
  countLine,
  etaLine,
  memoryLine,
  parseIds,
  percent,
} from "../../static/format.js";

const MEMORY = {
  available_gb: 3.2,
  required_gb: 10,
  next_check_in_seconds: 7.4,
  queue_position: 1,
};

test("a memory wait reads as one plain sentence that counts down", () => {
  assert.equal(
    memoryLine(MEMORY, 0),
    "Waiting for memory: 3.2 GB free, 10 GB needed, next check in 8 s",
  );
  assert.match(memoryLine(MEMORY, 5), /next check in 3 s$/);
  assert.match(memoryLine(MEMORY, 9), /checking now$/);
  assert.match(
    memoryLine({ ...MEMORY, queue_position: 3 }, 0),
    /\(number 3 in line\)$/,
  );
});

test("percent never shows 100 before every document is done", () => {
  const job = { progress: 0.999, files_completed: 2, files_total: 3 };
  assert.equal(percent(job), 99);
  assert.equal(percent({ ...job, files_completed: 3, progress: 1 }), 100);
  assert.equal(percent({ ...job, progress: 0.426 }), 43);
});

test("counts and times left say what is done and what remains", () => {
  const job = {
    files_completed: 1,
    files_total: 3,
    files_failed: 0,
    status: "running",
  };
  assert.equal(countLine(job), "1 of 3 documents");
  assert.equal(countLine({ ...job, files_failed: 1 }), "1 of 3 documents, 1 failed");
  assert.equal(etaLine({ ...job, eta_human: "18 seconds" }), "about 18 seconds left");
  assert.equal(etaLine({ ...job, eta_human: null }), "estimating the time left");
  assert.equal(etaLine({ ...job, status: "completed" }), "");
});

test("the connection line counts down to the next attempt", () => {
  const now = 1_000_000;
  const waiting = {
    status: "reconnecting",
    retryAt: now + 2_100,
    transport: "websocket",
  };
  assert.equal(connectionLine(waiting, now), "Connection lost; reconnecting in 3 s");
  assert.equal(
    connectionLine({ status: "live", transport: "sse" }),
    "Live (Server-Sent Events)",
  );
  const refused = {
    status: "closed",
    refused: true,
    error: { status: 401, code: "token_invalid", message: "the token is expired" },
  };
  assert.equal(connectionLine(refused), "Refused: the token is expired");
});

test("announcements name the job and its outcome", () => {
  const job = { job_id: "job-1", files_converted: 2, files_failed: 1, files_total: 3 };
  assert.equal(
    announcement({ ...job, status: "completed" }),
    "Job job-1 completed: 2 of 3 converted, 1 failed",
  );
  assert.equal(
    announcement({ ...job, status: "running" }, true),
    "Job job-1 started, 3 documents",
  );
  assert.equal(announcement({ ...job, status: "cancelled" }), "Job job-1 cancelled");
});

test("typed document ids split on lines and commas, blanks and repeats dropped", () => {
  assert.deepEqual(parseIds(" a.pdf, b.pdf\n\nc.pdf ,a.pdf,"), [
    "a.pdf",
    "b.pdf",
    "c.pdf",
  ]);
});
