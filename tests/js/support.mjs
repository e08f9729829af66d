// What the Node tests share: the real server in a child process, waiting on
// a streamer's events, and a WebSocket stand-in that the test can steer.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { WebSocket } from "ws";

import { createSession } from "../../static/streamer.js";

// Every wait in these tests derives from this, as in tests/conftest.py.
export const TIMEOUT = 5_000;

// Reconnection in milliseconds, so a test spends no time in backoff.
export const FAST_BACKOFF = { initial: 10, factor: 2, max: 80, jitter: 0.5 };

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, "..", "..");

function python() {
  if (process.env.STREAMER_PYTHON) return process.env.STREAMER_PYTHON;
  const venv = join(ROOT, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

/** Start tests/js/server.py; its port, base URL and a way to send commands. */
export async function startServer(t, args = []) {
  const child = spawn(python(), [join(HERE, "server.py"), ...args], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout });
  const waiting = new Map();
  let first;
  const ready = new Promise((resolve, reject) => {
    first = resolve;
    child.once("exit", (code) => reject(new Error(`server.py exited with ${code}`)));
  });
  lines.on("line", (line) => {
    const message = JSON.parse(line);
    if (first !== null && "port" in message && !("id" in message)) {
      first(message);
      first = null;
      return;
    }
    waiting.get(message.id)?.(message);
    waiting.delete(message.id);
  });
  const { port } = await within(ready, "server.py to start");
  t.after(() => {
    child.stdin.end();
    return within(new Promise((resolve) => child.once("exit", resolve)), "exit");
  });

  let next = 0;
  const command = (op, fields = {}) => {
    const id = ++next;
    const answer = new Promise((resolve) => waiting.set(id, resolve));
    child.stdin.write(`${JSON.stringify({ id, op, ...fields })}\n`);
    return within(answer, `the answer to ${op}`).then((reply) => {
      if (!reply.ok) throw new Error(`${op} failed: ${reply.error}`);
      return reply;
    });
  };
  const baseUrl = `http://127.0.0.1:${port}/`;
  return { port, baseUrl, command, session: () => createSession({ baseUrl }) };
}

/** `promise`, or a rejection naming `what` after TIMEOUT. */
export function within(promise, what, timeout = TIMEOUT) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out waiting for ${what}`)),
      timeout,
    );
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/**
 * Resolve once `check()` returns something truthy, checked at once and after
 * each job change and state change of `streamer`.
 */
export function until(streamer, check, what) {
  return within(
    new Promise((resolve) => {
      const offs = [];
      const test = () => {
        const value = check();
        if (!value) return;
        for (const off of offs) off();
        resolve(value);
      };
      offs.push(
        streamer.onJob("*", test),
        streamer.onState(test),
        streamer.on("*", test),
      );
      test();
    }),
    what,
  );
}

/**
 * A WebSocket constructor for the streamer, wrapping ws's, that a test can
 * hold (new sockets wait before connecting), mute (messages are swallowed,
 * as on a connection that died without a word) or make stutter (every
 * message delivered twice, as by a broken proxy).
 */
export class SocketControl {
  constructor() {
    this.held = false;
    this.muted = false;
    this.stutter = false;
    this.sockets = [];
    this._release = [];
    const control = this;
    this.WebSocket = function ControlledSocket(url) {
      return control._make(url);
    };
  }

  hold() {
    this.held = true;
  }

  release() {
    this.held = false;
    for (const start of this._release.splice(0)) start();
  }

  _make(url) {
    const proxy = {
      url,
      readyState: 0,
      onopen: null,
      onmessage: null,
      onerror: null,
      onclose: null,
      send: (data) => real?.send(data),
      close: (code) => {
        proxy.readyState = 3;
        if (real) real.close(code);
        else pending = false;
      },
    };
    let real = null;
    let pending = true;
    const start = () => {
      if (!pending) return;
      real = new WebSocket(url);
      real.onopen = () => {
        proxy.readyState = 1;
        proxy.onopen?.({});
      };
      real.onmessage = (event) => {
        if (this.muted) return;
        proxy.onmessage?.({ data: event.data });
        if (this.stutter) proxy.onmessage?.({ data: event.data });
      };
      real.onerror = (event) => proxy.onerror?.(event);
      real.onclose = (event) => {
        proxy.readyState = 3;
        proxy.onclose?.({ code: event.code, reason: event.reason });
      };
    };
    this.sockets.push(proxy);
    if (this.held) this._release.push(start);
    else queueMicrotask(start);
    return proxy;
  }
}
