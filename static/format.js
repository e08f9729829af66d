// The viewer's words: what a job's fields and the connection's state say to
// a person. Plain functions of plain values, so Node can test them.

import { isFinal } from "./store.js";

const STATUS = {
  pending: "Pending",
  running: "Running",
  waiting_for_memory: "Waiting for memory",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};

const DOCUMENT_STATUS = {
  pending: "waiting",
  converting: "converting",
  converted: "converted",
  failed: "failed",
  cancelled: "cancelled",
};

export function statusLabel(status) {
  return STATUS[status] ?? status;
}

export function documentStatusLabel(status) {
  return DOCUMENT_STATUS[status] ?? status;
}

/** 0..1 as a whole percent; never 100 before the job is really done. */
export function percent(job) {
  const value = Math.round(Math.min(1, Math.max(0, job.progress || 0)) * 100);
  return value === 100 && job.files_completed < job.files_total ? 99 : value;
}

/** GiB with at most one decimal: 3.2, 10. */
export function gb(value) {
  return String(Math.round(value * 10) / 10);
}

export function countLine(job) {
  const done = `${job.files_completed} of ${job.files_total} documents`;
  return job.files_failed > 0 ? `${done}, ${job.files_failed} failed` : done;
}

export function etaLine(job) {
  if (job.status === "running") {
    return job.eta_human ? `about ${job.eta_human} left` : "estimating the time left";
  }
  if (job.status === "pending") return "not started yet";
  return "";
}

export function currentLine(job) {
  if (!job.current_file) return "";
  const verb = job.status === "waiting_for_memory" ? "Next" : "Converting";
  return `${verb}: ${job.current_file}`;
}

/**
 * The memory wait in one sentence, counting down to the next check from the
 * seconds the server gave when the state arrived.
 */
export function memoryLine(memory, secondsSinceReceived) {
  if (!memory) return "";
  const left = Math.ceil((memory.next_check_in_seconds ?? 0) - secondsSinceReceived);
  const next = left > 0 ? `next check in ${left} s` : "checking now";
  const line =
    `Waiting for memory: ${gb(memory.available_gb)} GB free, ` +
    `${gb(memory.required_gb)} GB needed, ${next}`;
  const place = memory.queue_position;
  return place > 1 ? `${line} (number ${place} in line)` : line;
}

/** The connection state for a person; `now` counts the retry down. */
export function connectionLine(state, now = Date.now()) {
  const via = state.transport === "sse" ? " (Server-Sent Events)" : "";
  switch (state.status) {
    case "idle":
      return "Not connected";
    case "connecting":
      return state.attempt > 0 ? "Reconnecting…" : "Connecting…";
    case "live":
      return `Live${via}`;
    case "reconnecting": {
      const seconds = Math.max(0, Math.ceil((state.retryAt - now) / 1000));
      return seconds > 0
        ? `Connection lost; reconnecting in ${seconds} s`
        : "Reconnecting…";
    }
    case "closed":
      if (state.refused) return `Refused: ${state.error.message}`;
      if (state.error) return `Closed: ${state.error.message}`;
      return "Closed";
    default:
      return state.status;
  }
}

/** What a screen reader hears when a job appears or its status changes. */
export function announcement(job, appeared = false) {
  const name = `Job ${job.job_id}`;
  if (appeared && !isFinal(job.status)) {
    return `${name} started, ${job.files_total} documents`;
  }
  switch (job.status) {
    case "completed":
      const converted = `${job.files_converted} of ${job.files_total} converted`;
      const failed = job.files_failed > 0 ? `, ${job.files_failed} failed` : "";
      return `${name} completed: ${converted}${failed}`;
    case "failed":
      return `${name} failed`;
    case "cancelled":
      return `${name} cancelled`;
    case "waiting_for_memory":
      return `${name} is waiting for memory`;
    case "running":
      return `${name} is running`;
    default:
      return `${name} is ${statusLabel(job.status).toLowerCase()}`;
  }
}

/** Document ids typed by a person: one per line, or separated by commas. */
export function parseIds(text) {
  const ids = text
    .split(/[\n,]/)
    .map((id) => id.trim())
    .filter(Boolean);
  return [...new Set(ids)];
}
