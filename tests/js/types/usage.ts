// Compiled, never run: a page's use of streamer.js must type-check against
// streamer.d.ts, and the declarations must narrow each message by its type.

import {
  ApiError,
  type ConnectionState,
  type JobChange,
  type ServerMessage,
  Streamer,
  createSession,
} from "../../../static/streamer.js";

async function page(): Promise<void> {
  const { session_id, token } = await createSession({ baseUrl: "http://127.0.0.1/" });
  const streamer = new Streamer({ sessionId: session_id, token, loadDocuments: true });

  streamer.on("job.memory_wait", (message) => {
    const free: number = message.memory.available_gb;
    const next: number = message.job.memory_status?.next_check_in_seconds ?? 0;
    void [free, next];
  });
  streamer.on("snapshot", (message) => {
    const reset: boolean = message.reset;
    void reset;
  });
  streamer.on("job.document_failed", (message) => {
    const error: string | null = message.document.error;
    void error;
  });
  streamer.on("*", (message: ServerMessage) => {
    if (message.type === "resumed") {
      const replayed: number = message.replayed;
      void replayed;
    }
  });
  const off = streamer.onJob("*", (change: JobChange) => {
    const percent = Math.round((change.state?.job.progress ?? 0) * 100);
    const documents = [...(change.state?.documents.values() ?? [])].map(
      (d) => d.status,
    );
    void [percent, documents];
  });
  streamer.onState((state: ConnectionState) => {
    if (state.status === "reconnecting") void state.retryIn;
    if (state.refused) void state.error?.code;
  });
  streamer.connect();
  off();

  try {
    const job = await streamer.api.createJob(["a.pdf"]);
    const first: string = job.documents[0].document_id;
    await streamer.api.cancelJob(job.job_id);
    void first;
  } catch (error) {
    if (error instanceof ApiError) void error.code;
  }
  streamer.close();
}

// The browser's own classes fit the options, and so does one like ws's.
class NodeSocket {
  onopen: ((event: { type: string }) => void) | null = null;
  onmessage: ((event: { data: string | Buffer }) => void) | null = null;
  onerror: ((event: Error) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  constructor(readonly url: string) {}
  send(data: string): void {
    void data;
  }
  close(): void {}
}
type Buffer = Uint8Array;

const browser = new Streamer({ sessionId: "s", token: "t", WebSocket, EventSource });
const node = new Streamer({ sessionId: "s", token: "t", WebSocket: NodeSocket });
const sseOnly = new Streamer({ sessionId: "s", token: "t", WebSocket: undefined });
void [browser, node, sseOnly, page];
