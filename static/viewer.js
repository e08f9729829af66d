// The viewer page: opens the session named in the address's fragment, or a
// new one, and wires the form, the connection state and the job list to one
// Streamer. The token lives in the fragment, which browsers never send, so
// it reaches no server log and no Referer header.

import { connectionLine, parseIds } from "./format.js";
import { JobList } from "./jobview.js";
import { ApiError, Streamer, createSession } from "./streamer.js";

const $ = (id) => document.getElementById(id);

// The API lives beside this page, so the viewer also works when the app is
// mounted under a prefix of another site.
const ROOT = new URL(".", location.href);

// Announcements beyond this many in one go are summed up, not read out.
const MAX_SPOKEN = 3;

class Announcer {
  constructor(region) {
    this._region = region;
    this._queue = [];
    this._timer = 0;
  }

  say(text) {
    this._queue.push(text);
    if (this._timer === 0) this._timer = setTimeout(() => this._flush(), 200);
  }

  _flush() {
    this._timer = 0;
    const lines = this._queue.splice(0);
    const spoken = lines.slice(0, MAX_SPOKEN);
    if (lines.length > MAX_SPOKEN) {
      spoken.push(`and ${lines.length - MAX_SPOKEN} more changes`);
    }
    this._region.textContent = `${spoken.join(". ")}.`;
  }
}

const announcer = new Announcer($("announcer"));
const jobs = new JobList({
  list: $("jobs"),
  empty: $("no-jobs"),
  count: $("job-count"),
  jobTemplate: $("job-template"),
  documentTemplate: $("document-template"),
  announce: (text) => announcer.say(text),
});

let streamer = null;
let picked = [];

// File names of the session's uploads, by document id.
const names = new Map();

function learnNames(documents) {
  for (const document of documents) {
    if (document.filename) names.set(document.document_id, document.filename);
  }
  jobs.setNames(names);
}

function fragmentSession() {
  const params = new URLSearchParams(location.hash.slice(1));
  const sessionId = params.get("session");
  const token = params.get("token");
  return sessionId && token ? { sessionId, token } : null;
}

function open() {
  streamer?.close();
  streamer = null;
  const session = fragmentSession();
  showPanels(session !== null);
  $("refusal").hidden = true;
  $("start-text").hidden = false;
  if (session === null) {
    showConnection({ status: "idle" });
    return;
  }

  streamer = new Streamer({ ...session, baseUrl: ROOT, loadDocuments: true });
  names.clear();
  jobs.follow(streamer);
  streamer.onState(showConnection);
  streamer.connect();

  // A server without uploads has no names to give; ids will do.
  streamer.api.listDocuments().then(learnNames, () => {});
}

function showPanels(open) {
  $("start").hidden = open;
  $("new-job").hidden = !open;
  $("jobs-section").hidden = !open;
}

function showConnection(state) {
  const element = $("connection");
  element.dataset.status = state.refused ? "refused" : state.status;
  element.textContent = connectionLine(state);

  if (state.refused) {
    // The session cannot be used with this link: say why, offer a new one.
    showPanels(false);
    const refusal = $("refusal");
    refusal.textContent =
      `The server refused this session link: ${state.error.message} ` +
      `(${state.error.code}). Start a new session, or ask for a new link.`;
    refusal.hidden = false;
    $("start-text").hidden = true;
  }
}

// The countdown to the next attempt moves with the clock, not with events.
setInterval(() => {
  if (streamer?.state.status === "reconnecting") showConnection(streamer.state);
}, 1000);

$("new-session").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  try {
    const session = await createSession({ baseUrl: ROOT });
    const fragment = new URLSearchParams({
      session: session.session_id,
      token: session.token,
    });
    location.hash = fragment.toString();
  } catch (error) {
    showMessage($("start-error"), `No new session: ${error.message}`);
  } finally {
    button.disabled = false;
  }
});

window.addEventListener("hashchange", open);

// -- choosing files ------------------------------------------------------------

function isPdf(file) {
  return file.type === "application/pdf" || /\.pdf$/i.test(file.name);
}

function addFiles(files) {
  const skipped = [];
  for (const file of files) {
    if (!isPdf(file)) skipped.push(file.name);
    else if (!picked.some((p) => p.name === file.name && p.size === file.size)) {
      picked.push(file);
    }
  }
  renderPicked();
  if (skipped.length > 0) {
    showMessage(
      $("form-message"),
      `Only PDF files are taken; skipped ${skipped.join(", ")}`,
    );
  }
}

function renderPicked() {
  const list = $("picked");
  list.replaceChildren(
    ...picked.map((file, index) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = `${file.name} (${Math.ceil(file.size / 1024)} KB)`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${file.name}`);
      remove.addEventListener("click", () => {
        picked.splice(index, 1);
        renderPicked();
        $("files").focus();
      });
      item.append(name, remove);
      return item;
    }),
  );
}

$("files").addEventListener("change", (event) => {
  addFiles(event.currentTarget.files);
  event.currentTarget.value = "";
});

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  addFiles(event.dataTransfer.files);
});

// A file dropped beside the zone would make the browser open it instead.
for (const type of ["dragover", "drop"]) {
  window.addEventListener(type, (event) => event.preventDefault());
}

// -- starting a job ------------------------------------------------------------

$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (streamer === null) return;
  const message = $("form-message");
  const button = $("start-job");
  const ids = parseIds($("document-ids").value);
  if (picked.length === 0 && ids.length === 0) {
    showMessage(message, "Choose PDF files, or name documents, first.");
    return;
  }

  button.disabled = true;
  try {
    if (picked.length > 0) {
      const uploaded = await streamer.api.uploadDocuments(picked);
      learnNames(uploaded);
      ids.unshift(...uploaded.map((document) => document.document_id));
      picked = [];
      renderPicked();
    }
    const job = await streamer.api.createJob(ids);
    $("document-ids").value = "";
    showMessage(message, `Started job ${job.job_id}.`);
  } catch (error) {
    if (
      error instanceof ApiError &&
      error.status === 404 &&
      error.code === "not_found"
    ) {
      // A server without the upload endpoint still converts documents it
      // knows by id; the files' names are the likeliest ids to start from.
      const field = $("document-ids");
      field.value = parseIds(
        `${field.value}\n${picked.map((f) => f.name).join("\n")}`,
      ).join("\n");
      picked = [];
      renderPicked();
      $("ids-details").open = true;
      field.focus();
      showMessage(message, "This server takes no uploads; name the documents instead.");
    } else {
      showMessage(message, `The job was not started: ${error.message}`);
    }
  } finally {
    button.disabled = false;
  }
});

function showMessage(element, text) {
  element.textContent = text;
  element.hidden = false;
}

// For the browser tests, and for a person poking at the page's console.
globalThis.streamerViewer = {
  get streamer() {
    return streamer;
  },
  jobs,
};

open();
