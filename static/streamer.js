// Follow one session of a streamer server: the state of every job, kept live
// over a WebSocket, or Server-Sent Events where a WebSocket cannot connect.
//
// The rules of the wire are in docs/protocol.md. This module adds what a
// page should not have to: reconnecting with backoff, resuming from the
// last cursor, telling a refusal from an outage, and one place to listen.

import { ApiError, SessionApi, createSession, errorOf } from "./api.js";
import { Backoff } from "./backoff.js";
import { JobStore, isFinal, parseCursor } from "./store.js";

export { ApiError, Backoff, JobStore, SessionApi, createSession, isFinal, parseCursor };

// The answers to the pre-flight request that mean "never, with this token":
// a handshake refused for these is refused again on every retry.
const REFUSALS = new Set([400, 401, 403, 404]);

const FINAL_EVENTS = new Set(["job.completed", "job.failed", "job.cancelled"]);

const PING = JSON.stringify({ type: "ping" });

export class Streamer {
  constructor(options) {
    const { sessionId, token } = options ?? {};
    if (!sessionId || !token) throw new TypeError("sessionId and token are required");

    this.api = new SessionApi({
      sessionId,
      token,
      baseUrl: options.baseUrl,
      fetch: options.fetch,
    });
    this._token = token;
    this._WebSocket = "WebSocket" in options ? options.WebSocket : globalThis.WebSocket;
    this._EventSource =
      "EventSource" in options ? options.EventSource : globalThis.EventSource;
    this._transport = options.transport ?? "auto";
    this._backoff = new Backoff(options.backoff, options.random);
    this._pingInterval = options.pingInterval ?? 25_000;
    this._fallbackAfter = options.fallbackAfter ?? 2;
    this._loadDocuments = options.loadDocuments ?? false;

    this._store = new JobStore();
    this._listeners = new Map();
    this._jobListeners = new Map();
    this._stateListeners = new Set();
    this._loading = new Map();
    this._conn = null;
    this._timer = null;
    this._attempt = 0;
    this._wsFailures = 0;
    this._wsBroken = false;
    this._stopped = false;
    this._stats = { messages: 0, applied: 0, skipped: 0, connections: 0 };
    this._state = freezeState({ status: "idle" });
    this._online = () => this._retryNow();
  }

  /** The connection's state, as last reported to `onState` listeners. */
  get state() {
    return this._state;
  }

  /** Every job of the session, oldest first. */
  get jobs() {
    return [...this._store.jobs.values()];
  }

  /** The cursor of the last event applied, sent back on reconnection. */
  get cursor() {
    return this._store.cursor;
  }

  job(jobId) {
    return this._store.jobs.get(jobId) ?? null;
  }

  statistics() {
    return Object.freeze({ ...this._stats });
  }

  /** Listen to messages of one `type`, or of every type with "*". */
  on(type, listener) {
    return subscribe(this._listeners, type, listener);
  }

  /** Listen to the changes of one job, or of every job with "*". */
  onJob(jobId, listener) {
    return subscribe(this._jobListeners, jobId, listener);
  }

  onState(listener) {
    this._stateListeners.add(listener);
    return () => this._stateListeners.delete(listener);
  }

  connect() {
    if (this._stopped) throw new Error("this streamer is closed; make a new one");
    if (this._conn === null && this._timer === null && this._state.status === "idle") {
      globalThis.addEventListener?.("online", this._online);
      this._open();
    }
    return this;
  }

  /** Stop for good: no more messages, no reconnection. */
  close() {
    if (this._stopped) return;
    this._stop();
    this._setState({ status: "closed" });
  }

  /** Fetch one job's documents and merge them into its state. */
  async loadDocuments(jobId) {
    const body = await this.api.getJob(jobId);
    if (this._store.mergeDocuments(jobId, body.documents)) {
      this._emitJob(jobId, null, "documents");
    }
    return this.job(jobId);
  }

  // -- connections -------------------------------------------------------------

  _open() {
    const sse =
      this._transport === "sse" ||
      (this._transport === "auto" && (this._wsBroken || !this._WebSocket));
    const kind = sse ? "sse" : "websocket";
    if (sse ? !this._EventSource : !this._WebSocket) {
      this._stop();
      this._setState({
        status: "closed",
        error: {
          status: 0,
          code: "no_transport",
          message: `no ${sse ? "EventSource" : "WebSocket"} available: pass one in`,
        },
      });
      return;
    }

    this._stats.connections += 1;
    this._setState({ status: "connecting", transport: kind, attempt: this._attempt });
    const conn = { kind, opened: false, heard: false, answered: true, close: null };
    this._conn = conn;
    try {
      if (sse) this._openSse(conn);
      else this._openWebSocket(conn);
    } catch {
      // A constructor that throws (a bad URL, a blocked scheme) is one more
      // failure to connect; the pre-flight request tells which kind.
      queueMicrotask(() => this._dropped(conn));
    }
  }

  _streamUrl(kind) {
    const url = this.api.url(kind === "sse" ? "events" : "ws");
    if (kind === "websocket") url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", this._token);
    if (this._store.cursor !== null) url.searchParams.set("cursor", this._store.cursor);
    return url.href;
  }

  _openWebSocket(conn) {
    const socket = new this._WebSocket(this._streamUrl("websocket"));
    conn.close = () => {
      // ws for Node throws an unhandled "error" when a socket closed while
      // connecting has no error listener left, hence the no-op.
      socket.onopen = socket.onmessage = socket.onclose = null;
      socket.onerror = () => {};
      try {
        socket.close(1000);
      } catch {
        // Already closing: nothing to tidy.
      }
    };
    socket.onopen = () => {
      conn.opened = true;
      conn.ping = setInterval(() => this._ping(conn, socket), this._pingInterval);
    };
    socket.onmessage = (event) => this._received(conn, event.data);

    // Node 20's built-in WebSocket reports a refused handshake with an error
    // and never a close, so either one ends the connection.
    socket.onerror = () => this._dropped(conn);
    socket.onclose = () => this._dropped(conn);
  }

  _ping(conn, socket) {
    // Browsers cannot send protocol pings; a connection that stays silent
    // through a whole interval after our ping is dead, whatever TCP thinks.
    if (!conn.answered) {
      this._dropped(conn);
      return;
    }
    conn.answered = false;
    try {
      socket.send(PING);
    } catch {
      this._dropped(conn);
    }
  }

  _openSse(conn) {
    const source = new this._EventSource(this._streamUrl("sse"));
    conn.close = () => {
      source.onopen = source.onmessage = source.onerror = null;
      source.close();
    };
    source.onopen = () => {
      conn.opened = true;
    };
    source.onmessage = (event) => this._received(conn, event.data);

    // EventSource would reconnect by itself, without backoff and with no
    // way to tell a refusal; it is closed and reopened here instead.
    source.onerror = () => this._dropped(conn);
  }

  _received(conn, data) {
    if (conn !== this._conn) return;
    conn.answered = true;
    this._stats.messages += 1;
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message === null || typeof message !== "object") return;
    if (typeof message.type !== "string") return;

    // The end of an event stream: reconnect as for a closed socket.
    if (message.type === "closed") {
      this._emit(message);
      this._dropped(conn);
      return;
    }

    const known = this._store.jobs.has(message.job_id);
    const result = this._store.apply(message);
    if (!conn.heard && (message.type === "snapshot" || message.type === "resumed")) {
      conn.heard = true;
      this._attempt = 0;
      this._wsFailures = 0;
      this._setState({ status: "live", transport: conn.kind });
    }
    if (!result.applied) {
      this._stats.skipped += 1;
      return;
    }

    this._stats.applied += 1;
    this._emit(message);
    const reason = result.replaced ? "snapshot" : "event";
    for (const jobId of result.changed) this._emitJob(jobId, message, reason);
    if (this._loadDocuments) this._wantDocuments(message, result, known);
  }

  _dropped(conn) {
    if (conn !== this._conn) return;
    this._detach();
    if (this._stopped) return;

    if (conn.opened) this._retry();
    else this._preflight(conn.kind);
  }

  async _preflight(kind) {
    // A browser cannot see why a handshake failed; the same token on a plain
    // request can. The answer decides: give up, retry, or try SSE.
    let response;
    try {
      response = await this.api.request("jobs");
    } catch {
      if (!this._stopped) this._retry();
      return;
    }
    if (this._stopped) return;

    if (REFUSALS.has(response.status)) {
      const error = await errorOf(response);
      if (this._stopped) return;
      this._stop();
      this._setState({
        status: "closed",
        refused: true,
        error: { status: error.status, code: error.code, message: error.message },
      });
      return;
    }
    response.body?.cancel?.().catch(() => {});

    // The server answers and takes the token, yet the socket fails: a proxy
    // or a policy in the way of WebSockets, which SSE may get past.
    if (response.ok && kind === "websocket" && this._transport === "auto") {
      this._wsFailures += 1;
      if (this._wsFailures >= this._fallbackAfter && this._EventSource) {
        this._wsBroken = true;
      }
    }
    this._retry();
  }

  _retry() {
    const delay = this._backoff.delay(this._attempt);
    this._attempt += 1;
    this._setState({
      status: "reconnecting",
      transport: this._state.transport,
      attempt: this._attempt,
      retryAt: Date.now() + delay,
      retryIn: Math.ceil(delay / 1000),
    });
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay);
  }

  _retryNow() {
    // The network is back: waiting out the rest of a long delay helps nobody.
    if (this._timer === null || this._stopped) return;
    clearTimeout(this._timer);
    this._timer = null;
    this._open();
  }

  _detach() {
    const conn = this._conn;
    this._conn = null;
    if (conn === null) return;
    clearInterval(conn.ping);
    conn.close?.();
  }

  _stop() {
    this._stopped = true;
    this._detach();
    clearTimeout(this._timer);
    this._timer = null;
    globalThis.removeEventListener?.("online", this._online);
  }

  // -- listeners -----------------------------------------------------------------

  _setState(fields) {
    this._state = freezeState(fields);
    for (const listener of [...this._stateListeners]) call(listener, this._state);
  }

  _emit(message) {
    for (const key of [message.type, "*"]) {
      for (const listener of [...(this._listeners.get(key) ?? [])]) {
        call(listener, message);
      }
    }
  }

  _emitJob(jobId, message, reason) {
    const change = Object.freeze({ jobId, state: this.job(jobId), message, reason });
    for (const key of [jobId, "*"]) {
      for (const listener of [...(this._jobListeners.get(key) ?? [])]) {
        call(listener, change);
      }
    }
  }

  _wantDocuments(message, result, known) {
    // Documents are fetched when a job first shows up and once more when it
    // ends, since a cancel ends the converting document without an event.
    if (result.replaced) {
      for (const jobId of this._store.jobs.keys()) this._refreshDocuments(jobId);
      return;
    }
    if (message.type === "job.removed") return;
    if (!known || FINAL_EVENTS.has(message.type))
      this._refreshDocuments(message.job_id);
  }

  _refreshDocuments(jobId) {
    // One request per job at a time; a need that arises meanwhile is served
    // by one more request once the first has answered.
    if (this._loading.has(jobId)) {
      this._loading.set(jobId, true);
      return;
    }
    this._loading.set(jobId, false);
    this.loadDocuments(jobId)
      .catch(() => {})
      .finally(() => {
        const again = this._loading.get(jobId);
        this._loading.delete(jobId);
        if (again && !this._stopped && this.job(jobId)) this._refreshDocuments(jobId);
      });
  }
}

function freezeState(fields) {
  return Object.freeze({
    status: "idle",
    transport: null,
    attempt: 0,
    retryAt: null,
    retryIn: null,
    refused: false,
    error: null,
    ...fields,
  });
}

function subscribe(registry, key, listener) {
  if (typeof listener !== "function") throw new TypeError("a listener is a function");
  let listeners = registry.get(key);
  if (listeners === undefined) registry.set(key, (listeners = new Set()));
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function call(listener, value) {
  // One page's broken listener must not stop the others, nor the stream.
  try {
    listener(value);
  } catch (error) {
    if (typeof reportError === "function") reportError(error);
    else
      queueMicrotask(() => {
        throw error;
      });
  }
}
