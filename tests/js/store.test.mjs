// The pure parts of streamer.js: the job store's rules and the backoff.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff } from "../../static/backoff.js";
import { JobStore, parseCursor, timeKey } from "../../static/store.js";

const EPOCH = "5bc428231c38d8579e3f1a07";

function job(id, fields = {}) {
  return { job_id: id, status: "running", progress: 0, ...fields };
}

function event(seq, type, id, fields = {}, extra = {}) {
  return {
    type,
    cursor: `${EPOCH}-${seq}`,
    job_id: id,
    ts: extra.ts ?? `2026-12-03T09:48:${String(seq).padStart(2, "0")}+00:00`,
    job: job(id, fields),
    ...extra,
  };
}

function snapshot(seq, jobs, { epoch = EPOCH, reset = false } = {}) {
  return { type: "snapshot", cursor: `${epoch}-${seq}`, reset, jobs };
}

test("a cursor splits at its last dash into epoch and sequence number", () => {
  assert.deepEqual(parseCursor(`${EPOCH}-33`), { epoch: EPOCH, seq: 33 });
  for (const bad of ["", "33", "-4", "abc-", "abc-x", "abc-1.5", null]) {
    assert.equal(parseCursor(bad), null, String(bad));
  }
});

test("times order by their microseconds, which Date.parse would drop", () => {
  const early = timeKey("2026-12-03T09:48:27.646146+00:00");
  const late = timeKey("2026-12-03T09:48:27.646147+00:00");
  assert.ok(late > early);
  assert.ok(timeKey("2026-12-03T09:48:27+00:00") < early);
  assert.equal(timeKey("2026-12-03T10:48:27+01:00"), timeKey("2026-12-03T09:48:27Z"));
});

test("an event whose sequence number was seen already is skipped", () => {
  const store = new JobStore();
  store.apply(snapshot(0, []));
  assert.equal(store.apply(event(1, "job.created", "a")).applied, true);
  assert.equal(
    store.apply(event(2, "job.progress", "a", { progress: 0.5 })).applied,
    true,
  );

  const again = store.apply(event(2, "job.progress", "a", { progress: 0.5 }));
  const older = store.apply(event(1, "job.created", "a", { progress: 0 }));
  assert.equal(again.applied, false);
  assert.equal(older.applied, false);
  assert.equal(store.jobs.get("a").job.progress, 0.5);
  assert.equal(store.cursor, `${EPOCH}-2`);
});

test("an event of another epoch is not applied without a snapshot first", () => {
  const store = new JobStore();
  store.apply(snapshot(0, [job("a")]));
  const foreign = { ...event(9, "job.removed", "a"), cursor: "other-9" };
  assert.equal(store.apply(foreign).applied, false);
  assert.ok(store.jobs.has("a"));
});

test("a snapshot replaces the whole state, and names every job it touched", () => {
  const store = new JobStore();
  store.apply(snapshot(0, [job("a"), job("b")]));
  const result = store.apply(
    snapshot(4, [job("b"), job("c")], { epoch: "new", reset: true }),
  );
  assert.equal(result.replaced, true);
  assert.deepEqual([...store.jobs.keys()], ["b", "c"]);
  assert.deepEqual(new Set(result.changed), new Set(["a", "b", "c"]));

  // The new epoch counts from the snapshot's cursor on.
  assert.equal(
    store.apply({ ...event(4, "job.progress", "b"), cursor: "new-4" }).applied,
    false,
  );
  assert.equal(
    store.apply({ ...event(5, "job.progress", "b"), cursor: "new-5" }).applied,
    true,
  );
});

test("a job keeps its latest state by time, as coalesced progress needs", () => {
  const store = new JobStore();
  store.apply(snapshot(0, [job("a")]));
  store.apply(
    event(
      1,
      "job.progress",
      "a",
      { progress: 0.6, current_file: "b.pdf" },
      {
        ts: "2026-12-03T09:48:10.5+00:00",
      },
    ),
  );
  const failed = { document_id: "a.pdf", status: "failed", error: "ValueError: x" };
  store.apply(
    event(
      2,
      "job.document_failed",
      "a",
      { progress: 0.5 },
      {
        ts: "2026-12-03T09:48:10.2+00:00",
        document: failed,
      },
    ),
  );
  const state = store.jobs.get("a");
  assert.equal(state.job.progress, 0.6);
  assert.equal(state.documents.get("a.pdf").status, "failed");
});

test("a removed job leaves the state", () => {
  const store = new JobStore();
  store.apply(snapshot(0, [job("a")]));
  store.apply(event(1, "job.removed", "a"));
  assert.equal(store.jobs.size, 0);
});

test("documents merge in the job's order and never move backwards", () => {
  const store = new JobStore();
  store.apply(snapshot(0, [job("a")]));
  const converted = { document_id: "y.pdf", status: "converted", result: { pages: 1 } };
  store.apply(event(1, "job.document_converted", "a", {}, { document: converted }));
  const stale = [
    { document_id: "x.pdf", status: "converted" },
    { document_id: "y.pdf", status: "converting" },
    { document_id: "z.pdf", status: "pending" },
  ];
  assert.equal(store.mergeDocuments("a", stale), true);
  const state = store.jobs.get("a");
  assert.deepEqual([...state.documents.keys()], ["x.pdf", "y.pdf", "z.pdf"]);
  assert.equal(state.documents.get("y.pdf"), converted);
  assert.equal(state.detailed, true);
  assert.equal(store.mergeDocuments("gone", stale), false);
});

test("a reset keeps a surviving job's documents but asks for them again", () => {
  const store = new JobStore();
  store.apply(snapshot(0, [job("a")]));
  store.mergeDocuments("a", [{ document_id: "x.pdf", status: "converted" }]);
  store.apply(snapshot(7, [job("a", { status: "completed" })], { reset: true }));
  const state = store.jobs.get("a");
  assert.equal(state.detailed, false);
  assert.equal(state.documents.get("x.pdf").status, "converted");
});

test("backoff grows by its factor up to its cap, less at most its jitter", () => {
  const none = new Backoff(
    { initial: 100, factor: 2, max: 1000, jitter: 0.5 },
    () => 0,
  );
  assert.deepEqual(
    [0, 1, 2, 3, 4, 10].map((n) => none.delay(n)),
    [100, 200, 400, 800, 1000, 1000],
  );
  const most = new Backoff(
    { initial: 100, factor: 2, max: 1000, jitter: 0.5 },
    () => 0.999,
  );
  assert.equal(most.delay(0), 50);
  assert.equal(most.delay(9), 500);
  assert.throws(() => new Backoff({ jitter: 1 }), RangeError);
  assert.throws(() => new Backoff({ initial: 0 }), RangeError);
});
