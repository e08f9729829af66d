// The state of a session's jobs, built from the stream's messages. No I/O:
// the connection feeds messages in and reads back what changed, so the rules
// below (dedupe, reset, ordering) are testable without a server.

const FINAL = new Set(["completed", "failed", "cancelled"]);

// A document's statuses only move forward; a late answer must not undo one.
const DOCUMENT_RANK = {
  pending: 0,
  converting: 1,
  converted: 2,
  failed: 2,
  cancelled: 2,
};

/** `<epoch>-<seq>` split at its last dash; null for anything else. */
export function parseCursor(cursor) {
  if (typeof cursor !== "string") return null;
  const dash = cursor.lastIndexOf("-");
  const digits = cursor.slice(dash + 1);
  const seq = Number(digits);
  if (dash <= 0 || !/^\d+$/.test(digits) || !Number.isSafeInteger(seq)) return null;
  return { epoch: cursor.slice(0, dash), seq };
}

/**
 * An ISO 8601 time as microseconds since 1970, for ordering.
 *
 * Date.parse keeps milliseconds only, and the server's times differ by
 * microseconds, so the fraction is read by hand.
 */
export function timeKey(ts) {
  if (typeof ts !== "string") return -Infinity;
  const match = /^([^.]+?)(?:\.(\d+))?([+-]\d\d:\d\d|Z)$/.exec(ts);
  if (match === null) return -Infinity;
  const seconds = Date.parse(match[1] + match[3]);
  if (Number.isNaN(seconds)) return -Infinity;
  const micros = Number((match[2] ?? "").padEnd(6, "0").slice(0, 6));
  return seconds * 1000 + micros;
}

export function isFinal(status) {
  return FINAL.has(status);
}

export class JobStore {
  constructor() {
    /** @type {Map<string, object>} job id to JobState, oldest first */
    this.jobs = new Map();
    this.cursor = null;
    this._epoch = null;
    this._seq = -1;
  }

  /**
   * Apply one message of the stream.
   *
   * Returns `{ applied, changed, replaced }`: whether the message was taken
   * (false for a duplicate or a foreign event), the ids of the jobs it
   * changed, and whether it replaced the whole state (every snapshot does).
   */
  apply(message, now = Date.now()) {
    if (message.type === "snapshot") return this._snapshot(message, now);
    if (message.type === "resumed")
      return { applied: true, changed: [], replaced: false };
    if (typeof message.type !== "string" || !message.type.startsWith("job.")) {
      return { applied: true, changed: [], replaced: false };
    }

    const position = parseCursor(message.cursor);
    if (position === null) return skipped();

    // A cursor of another epoch belongs to another server process: the
    // server always opens a new epoch with a snapshot, never with an event.
    if (this._epoch !== null && position.epoch !== this._epoch) return skipped();
    if (this._epoch !== null && position.seq <= this._seq) return skipped();

    this._epoch = position.epoch;
    this._seq = position.seq;
    this.cursor = message.cursor;
    this._event(message, now);
    return { applied: true, changed: [message.job_id], replaced: false };
  }

  /** Merge the `documents` of `GET .../jobs/{job_id}`; false for an unknown job. */
  mergeDocuments(jobId, documents) {
    const state = this.jobs.get(jobId);
    if (state === undefined || !Array.isArray(documents)) return false;

    // The answer gives the job's order of documents; what events already
    // said about a document wins when it is further along.
    const merged = new Map();
    for (const document of documents) {
      const known = state.documents.get(document.document_id);
      merged.set(document.document_id, newer(known, document));
    }
    for (const [id, document] of state.documents) {
      if (!merged.has(id)) merged.set(id, document);
    }
    state.documents = merged;
    state.detailed = true;
    return true;
  }

  _snapshot(message, now) {
    const position = parseCursor(message.cursor);
    const before = new Set(this.jobs.keys());
    const jobs = new Map();
    for (const job of message.jobs ?? []) {
      // Documents are kept for jobs that survive a reset, but marked as
      // needing a fresh look: events about them may have been missed.
      const old = this.jobs.get(job.job_id);
      jobs.set(job.job_id, {
        job,
        documents: old?.documents ?? new Map(),
        detailed: false,
        ts: null,
        receivedAt: now,
      });
      before.add(job.job_id);
    }
    this.jobs = jobs;
    this.cursor = message.cursor ?? null;
    this._epoch = position?.epoch ?? null;
    this._seq = position?.seq ?? -1;
    return { applied: true, changed: [...before], replaced: true };
  }

  _event(message, now) {
    if (message.type === "job.removed") {
      this.jobs.delete(message.job_id);
      return;
    }

    let state = this.jobs.get(message.job_id);
    if (state === undefined) {
      state = {
        job: message.job,
        documents: new Map(),
        detailed: false,
        ts: message.ts,
        receivedAt: now,
      };
      this.jobs.set(message.job_id, state);
    } else if (timeKey(message.ts) >= timeKey(state.ts)) {
      // A coalesced progress can overtake the lifecycle events queued
      // behind it; keeping the latest job by time never moves it backwards.
      state.job = message.job;
      state.ts = message.ts;
      state.receivedAt = now;
    }

    const document = message.document;
    if (document && typeof document.document_id === "string") {
      const known = state.documents.get(document.document_id);
      state.documents.set(document.document_id, newer(known, document));
    }
  }
}

function newer(known, given) {
  if (known === undefined) return given;
  const rank = (d) => DOCUMENT_RANK[d.status] ?? 0;
  return rank(given) >= rank(known) ? given : known;
}

function skipped() {
  return { applied: false, changed: [], replaced: false };
}
