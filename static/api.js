// The HTTP half of the protocol (docs/protocol.md): sessions, jobs, uploads
// and results. The token goes in the Authorization header, never in a URL, so
// it stays out of logs and browser history.

export class ApiError extends Error {
  /** An answer that was not a success: its status and the body's error code. */
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

function pickFetch(given) {
  if (given) return given;
  if (typeof globalThis.fetch !== "function") {
    throw new TypeError("no fetch available: pass options.fetch");
  }
  // window.fetch called as a method of another object throws "Illegal
  // invocation" in browsers.
  return globalThis.fetch.bind(globalThis);
}

/** The server's root as a URL ending in "/": the option, or the page's site. */
export function rootUrl(baseUrl) {
  const page = globalThis.location?.href;
  if (baseUrl === undefined && page === undefined) {
    throw new TypeError("no baseUrl given and no page location");
  }
  const url = baseUrl === undefined ? new URL("/", page) : new URL(baseUrl);
  url.search = "";
  url.hash = "";
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url;
}

export async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body?.error?.code) ({ code, message } = body.error);
  } catch {
    // Not the API's JSON error body: the status line says it all.
  }
  return new ApiError(response.status, code, message);
}

/** An id as one path segment: "." and ".." would be resolved away by URL. */
function segment(id) {
  return encodeURIComponent(id).replaceAll(".", "%2E");
}

/** The JSON body of a success, or the ApiError of anything else. */
async function bodyOf(answer) {
  const response = await answer;
  if (!response.ok) throw await errorOf(response);
  return response.status === 204 ? null : response.json();
}

/** POST /api/sessions: a new session's `{session_id, token, expires_at}`. */
export function createSession(options = {}) {
  const headers = {};
  if (options.adminKey) headers.Authorization = `Bearer ${options.adminKey}`;
  const url = new URL("api/sessions", rootUrl(options.baseUrl));
  return bodyOf(pickFetch(options.fetch)(url, { method: "POST", headers }));
}

/** The HTTP endpoints of one session, with its token. */
export class SessionApi {
  constructor({ sessionId, token, baseUrl, fetch }) {
    this.sessionId = sessionId;
    this._token = token;
    this._fetch = pickFetch(fetch);
    this.root = rootUrl(baseUrl);
    this.base = new URL(`api/sessions/${segment(sessionId)}/`, this.root);
  }

  url(path) {
    return new URL(path, this.base);
  }

  /** A raw request with the token; the Response, whatever its status. */
  request(path, init = {}) {
    const headers = { ...init.headers, Authorization: `Bearer ${this._token}` };
    return this._fetch(this.url(path), { ...init, headers });
  }

  _json(path, init = {}) {
    return bodyOf(this.request(path, init));
  }

  async listJobs() {
    return (await this._json("jobs")).jobs;
  }

  getJob(jobId) {
    return this._json(`jobs/${segment(jobId)}`);
  }

  createJob(documentIds) {
    return this._json("jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ document_ids: documentIds }),
    });
  }

  cancelJob(jobId) {
    return this._json(`jobs/${segment(jobId)}/cancel`, { method: "POST" });
  }

  removeJob(jobId) {
    return this._json(`jobs/${segment(jobId)}`, { method: "DELETE" });
  }

  /** The session's uploads, oldest first. */
  async listDocuments() {
    return (await this._json("documents")).documents;
  }

  /** Upload files as `file` fields; the `documents` the server made of them. */
  async uploadDocuments(files) {
    const form = new FormData();
    for (const file of files) form.append("file", file, file.name);
    return (await this._json("documents", { method: "POST", body: form })).documents;
  }

  /** The result of one converted document, as a Response to read as needed. */
  async fetchResult(jobId, documentId) {
    const path = `jobs/${segment(jobId)}/documents/` + `${segment(documentId)}/result`;
    const response = await this.request(path);
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}
