// The list of jobs on the page, one keyed node per job, updated in place.
//
// Changes are only noted as they arrive and applied once per animation
// frame, so a hundred jobs reporting ten times a second cost one pass over
// the jobs that changed, sixty times a second at most, and nothing at all in
// a hidden tab.

import {
  announcement,
  countLine,
  currentLine,
  documentStatusLabel,
  etaLine,
  memoryLine,
  percent,
  statusLabel,
} from "./format.js";
import { ApiError, isFinal } from "./streamer.js";

const ACTIVE = new Set(["pending", "running", "waiting_for_memory"]);

// A job with this many documents or fewer shows them without a click.
const OPEN_DOCUMENTS = 5;

export class JobList {
  constructor({ list, empty, count, jobTemplate, documentTemplate, announce }) {
    this._list = list;
    this._empty = empty;
    this._count = count;
    this._jobTemplate = jobTemplate;
    this._documentTemplate = documentTemplate;
    this._announce = announce;
    this._views = new Map();
    this._names = new Map();
    this._dirty = new Map();
    this._reorder = false;
    this._frame = 0;
    this._streamer = null;
    this._off = [];
    this._ticker = setInterval(() => this._tick(), 1000);
    /** How long each frame's rendering took, in milliseconds. */
    this.timings = new Timings(600);
    this._list.addEventListener("click", (event) => this._clicked(event));
  }

  /** Show `streamer`'s jobs from now on, and only its. */
  follow(streamer) {
    for (const off of this._off.splice(0)) off();
    this._streamer = streamer;
    for (const view of this._views.values()) view.root.remove();
    this._views.clear();
    this._off.push(
      streamer.onJob("*", (change) => this._changed(change)),
      streamer.on("job.save_failed", (message) => this._saveFailed(message)),
      streamer.on("job.suspended", (message) =>
        this._announce(
          `Job ${message.job_id} paused: ${message.reason}; it resumes when the` +
            " server is back",
        ),
      ),
      streamer.on("snapshot", (message) => {
        if (message.reset) {
          const count = message.jobs.length;
          this._announce(
            "Reconnected; showing the server's current state, " +
              (count === 1 ? "1 job" : `${count} jobs`),
          );
        }
      }),
    );
    for (const state of streamer.jobs) this._mark(state.job.job_id, true);
    this._reorder = true;
    this._schedule();
  }

  /** Show uploaded documents by their file names, not their ids. */
  setNames(names) {
    this._names = names;
    for (const view of this._views.values()) {
      for (const [documentId, row] of view.documents) this._name(row, documentId);
    }
  }

  _changed(change) {
    const message = change.message;
    const documents =
      change.reason !== "event" ||
      Boolean(message?.document) ||
      isFinal(message?.job?.status);
    this._mark(change.jobId, documents);
    if (change.reason === "snapshot") this._reorder = true;
    this._schedule();
  }

  _mark(jobId, documents) {
    this._dirty.set(jobId, (this._dirty.get(jobId) ?? false) || documents);
  }

  _schedule() {
    if (this._frame === 0) this._frame = requestAnimationFrame(() => this._render());
  }

  _render() {
    this._frame = 0;
    const started = performance.now();
    const dirty = this._dirty;
    this._dirty = new Map();
    for (const [jobId, documents] of dirty) {
      const state = this._streamer?.job(jobId) ?? null;
      if (state === null) this._drop(jobId);
      else this._update(this._view(jobId), state, documents);
    }
    if (this._reorder) this._sort();
    this._reorder = false;

    const count = this._views.size;
    this._empty.hidden = count > 0;
    setText(this._count, count === 1 ? "1 job" : `${count} jobs`);

    this.timings.add(performance.now() - started);
  }

  _view(jobId) {
    let view = this._views.get(jobId);
    if (view !== undefined) return view;

    const root = this._jobTemplate.content.firstElementChild.cloneNode(true);
    const parts = partsOf(root);
    root.dataset.jobId = jobId;
    const titleId = `job-${jobId}-title`;
    parts.title.id = titleId;
    parts.title.textContent = jobId;
    parts.card.setAttribute("aria-labelledby", titleId);
    parts.bar.setAttribute("aria-labelledby", titleId);
    view = { root, parts, last: {}, documents: new Map(), fresh: true };
    this._views.set(jobId, view);

    // New jobs go on top; a reset puts every node in its place anyway.
    this._list.prepend(root);
    return view;
  }

  _saveFailed(message) {
    // The server retries the write on its own; the card says so until the
    // page reloads, since no message tells that a later write succeeded.
    const text = `Not saved yet (the server retries): ${message.error}`;
    this._announce(`Job ${message.job_id} could not be saved: ${message.error}`);
    const view = this._views.get(message.job_id);
    if (view !== undefined) {
      view.saveError = text;
      this._mark(message.job_id, false);
      this._schedule();
    }
  }

  _drop(jobId) {
    const view = this._views.get(jobId);
    if (view === undefined) return;
    if (view.root.contains(document.activeElement)) this._list.focus();
    view.root.remove();
    this._views.delete(jobId);
  }

  _sort() {
    // Newest first, the reverse of the server's order.
    const jobs = this._streamer?.jobs ?? [];
    let before = this._list.firstElementChild;
    for (let i = jobs.length - 1; i >= 0; i -= 1) {
      const view = this._views.get(jobs[i].job.job_id);
      if (view === undefined) continue;
      if (view.root !== before) this._list.insertBefore(view.root, before);
      else before = before.nextElementSibling;
    }
  }

  _update(view, state, documents) {
    const { job } = state;
    const { parts } = view;
    const changed = (key, value) => {
      if (view.last[key] === value) return false;
      view.last[key] = value;
      return true;
    };

    const previous = view.last.status;
    if (changed("status", job.status)) {
      view.root.dataset.status = job.status;
      parts.status.textContent = statusLabel(job.status);
      this._statusChanged(view, previous, job, state);
    }

    const value = percent(job);
    if (changed("percent", value)) {
      parts.fill.style.transform = `scaleX(${value / 100})`;
      parts.bar.setAttribute("aria-valuenow", String(value));
      parts.percent.textContent = `${value}%`;
    }
    const count = countLine(job);
    if (changed("count", count)) parts.count.textContent = count;
    if (changed("valuetext", `${value}%, ${count}`)) {
      parts.bar.setAttribute("aria-valuetext", `${value}%, ${count}`);
    }
    showText(parts.eta, changed("eta", etaLine(job)), view.last.eta);
    showText(parts.current, changed("current", currentLine(job)), view.last.current);
    this._memory(view, state);
    const error = view.actionError ?? job.error ?? view.saveError ?? "";
    showText(parts.error, changed("error", error), error);
    if (documents || view.fresh) this._documents(view, state);
    view.fresh = false;
  }

  _statusChanged(view, previous, job, state) {
    const active = ACTIVE.has(job.status);
    const { cancel } = view.parts;
    if (!active && cancel.contains(document.activeElement)) view.parts.title.focus();
    cancel.hidden = !active;
    cancel.removeAttribute("aria-disabled");
    cancel.textContent = "Cancel";
    view.actionError = undefined;

    // What the page loaded with, and what a reset brought, is not news.
    if (state.ts !== null) this._announce(announcement(job, previous === undefined));
  }

  _memory(view, state) {
    const memory = state.job.memory_status ?? null;
    const seconds = (Date.now() - state.receivedAt) / 1000;
    const line =
      state.job.status === "waiting_for_memory" ? memoryLine(memory, seconds) : "";
    const { parts, last } = view;
    if (last.memory !== line) {
      last.memory = line;
      parts.memory.textContent = line;
      parts.memory.hidden = line === "";
    }
  }

  _documents(view, state) {
    const { parts } = view;
    const total = state.job.files_total;
    if (view.last.total !== total) {
      view.last.total = total;
      parts.summary.textContent = total === 1 ? "1 document" : `${total} documents`;
      parts.details.open = total <= OPEN_DOCUMENTS;
    }
    let before = parts.documents.firstElementChild;
    for (const outcome of state.documents.values()) {
      const row = this._documentRow(view, outcome.document_id);
      if (row.root !== before) parts.documents.insertBefore(row.root, before);
      else before = before.nextElementSibling;
      if (row.outcome === outcome) continue;

      row.outcome = outcome;
      row.root.dataset.status = outcome.status;
      row.parts.status.textContent = documentStatusLabel(outcome.status);
      setText(row.parts.detail, detailOf(outcome));
      row.parts.download.hidden = !(outcome.status === "converted" && outcome.result);
    }
  }

  _documentRow(view, documentId) {
    let row = view.documents.get(documentId);
    if (row !== undefined) return row;
    const root = this._documentTemplate.content.firstElementChild.cloneNode(true);
    const parts = partsOf(root);
    root.dataset.documentId = documentId;
    row = { root, parts, outcome: null, name: null };
    this._name(row, documentId);
    view.documents.set(documentId, row);
    return row;
  }

  _name(row, documentId) {
    const name = this._names.get(documentId) ?? documentId;
    if (row.name === name) return;
    row.name = name;
    row.parts.name.textContent = name;
    if (name !== documentId) row.parts.name.title = documentId;
    row.parts.download.setAttribute("aria-label", `Download the result of ${name}`);
  }

  _tick() {
    // Only the countdowns of memory waits move with the clock.
    for (const [jobId, view] of this._views) {
      if (view.last.status !== "waiting_for_memory") continue;
      const state = this._streamer?.job(jobId);
      if (state) this._memory(view, state);
    }
  }

  async _clicked(event) {
    const button = event.target.closest("button[data-action]");
    const item = button?.closest("[data-job-id]");
    if (!button || !item || this._streamer === null) return;
    if (button.getAttribute("aria-disabled") === "true") return;
    const jobId = item.dataset.jobId;
    const view = this._views.get(jobId);
    try {
      if (button.dataset.action === "cancel") {
        // Not `disabled`: a disabled button drops the keyboard focus, which
        // is to move to the job's title once the job has ended.
        button.setAttribute("aria-disabled", "true");
        button.textContent = "Cancelling…";
        await this._streamer.api.cancelJob(jobId);
      } else if (button.dataset.action === "download") {
        const documentId = button.closest("[data-document-id]").dataset.documentId;
        await download(this._streamer, jobId, documentId);
        if (view?.actionError !== undefined) {
          view.actionError = undefined;
          this._mark(jobId, false);
          this._schedule();
        }
      }
    } catch (error) {
      // A job that ended while the click was on its way is not an error.
      if (error instanceof ApiError && error.code === "job_finished") return;
      button.removeAttribute("aria-disabled");
      if (button.dataset.action === "cancel") button.textContent = "Cancel";
      if (view !== undefined) {
        view.actionError = error.message;
        this._mark(jobId, false);
        this._schedule();
      }
    }
  }
}

/** The last `size` durations, without growing for the life of the page. */
class Timings {
  constructor(size) {
    this._values = new Float64Array(size);
    this.count = 0;
  }

  add(value) {
    this._values[this.count % this._values.length] = value;
    this.count += 1;
  }

  /** The durations kept, oldest first. */
  values() {
    const size = this._values.length;
    if (this.count <= size) return Array.from(this._values.subarray(0, this.count));
    const start = this.count % size;
    return [...this._values.subarray(start), ...this._values.subarray(0, start)];
  }
}

async function download(streamer, jobId, documentId) {
  const response = await streamer.api.fetchResult(jobId, documentId);
  const blob = await response.blob();
  const outcome = streamer.job(jobId)?.documents.get(documentId);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = filenameOf(response, outcome, documentId);
  document.body.append(link);
  link.click();
  link.remove();

  // The download has its own copy by the time the click handler returns.
  setTimeout(() => URL.revokeObjectURL(link.href), 0);
}

function filenameOf(response, outcome, documentId) {
  const header = response.headers.get("content-disposition") ?? "";
  const star = /filename\*=UTF-8''([^;]+)/i.exec(header);
  if (star) return decodeURIComponent(star[1]);
  const plain = /filename="?([^";]+)"?/i.exec(header);
  if (plain) return plain[1];
  const output = outcome?.result?.output;
  return typeof output === "string" && output ? output : `${documentId}.result`;
}

function detailOf(outcome) {
  return outcome.status === "failed" ? (outcome.error ?? "") : "";
}

function partsOf(root) {
  const parts = {};
  for (const element of root.querySelectorAll("[data-part]")) {
    parts[element.dataset.part] = element;
  }
  return parts;
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function showText(element, changed, text) {
  if (!changed) return;
  element.textContent = text;
  element.hidden = !text;
}
