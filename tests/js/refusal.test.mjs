// A refused token stops the client for good; an outage does not.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Streamer } from "../../static/streamer.js";
import { FAST_BACKOFF, SocketControl, startServer, until } from "./support.mjs";

function refusedWith(t, server, sessionId, token) {
  const streamer = new Streamer({
    baseUrl: server.baseUrl,
    sessionId,
    token,
    WebSocket: new SocketControl().WebSocket,
    EventSource: undefined,
    backoff: FAST_BACKOFF,
  });
  t.after(() => streamer.close());
  const states = [];
  streamer.onState((state) => states.push(state.status));
  streamer.connect();
  return { streamer, states };
}

test("a bad token closes the client with the server's reason", async (t) => {
  const server = await startServer(t);
  const session = await server.session();
  const { streamer, states } = refusedWith(
    t,
    server,
    session.session_id,
    "st1.bad.token",
  );
  await until(streamer, () => streamer.state.status === "closed", "the refusal");

  assert.equal(streamer.state.refused, true);
  assert.equal(streamer.state.error.status, 401);
  assert.equal(streamer.state.error.code, "token_invalid");
  assert.deepEqual(states, ["connecting", "closed"], "no attempt after the refusal");
  assert.equal(streamer.statistics().connections, 1);
});

test("another session's token is refused as such", async (t) => {
  const server = await startServer(t);
  const mine = await server.session();
  const theirs = await server.session();
  const { streamer } = refusedWith(t, server, theirs.session_id, mine.token);
  await until(streamer, () => streamer.state.status === "closed", "the refusal");
  assert.equal(streamer.state.error.status, 403);
  assert.equal(streamer.state.error.code, "token_wrong_session");
});

test("a server that is down is retried, not taken for a refusal", async (t) => {
  const server = await startServer(t);
  const session = await server.session();

  // Nothing listens on port 9 of the loopback: connections are refused.
  const streamer = new Streamer({
    baseUrl: "http://127.0.0.1:9/",
    sessionId: session.session_id,
    token: session.token,
    WebSocket: new SocketControl().WebSocket,
    EventSource: undefined,
    backoff: FAST_BACKOFF,
  });
  t.after(() => streamer.close());
  streamer.connect();
  await until(streamer, () => streamer.state.attempt >= 3, "three attempts");
  assert.notEqual(streamer.state.status, "closed");
  assert.equal(streamer.state.refused, false);

  streamer.close();
  assert.equal(streamer.state.status, "closed");
  assert.equal(streamer.state.refused, false);
});
