// Types of streamer.js and of every message of the wire protocol
// (docs/protocol.md). The module itself is plain JavaScript, no build step.

// -- the wire -------------------------------------------------------------------

export type JobStatus =
  "pending" | "running" | "waiting_for_memory" | "completed" | "failed" | "cancelled";

export type DocumentStatus =
  "pending" | "converting" | "converted" | "failed" | "cancelled";

/** A job's memory wait: `memory_status` of a job, `memory` of `job.memory_wait`. */
export interface MemoryStatus {
  available_gb: number;
  required_gb: number;
  available_bytes: number;
  required_bytes: number;
  source: string;
  waiting_since: string;
  next_check_at: string;
  next_check_in_seconds: number;
  queue_position: number;
  message: string;
}

/** The `memory` of `job.memory_resumed`. */
export interface MemoryResumed {
  available_gb: number;
  available_bytes: number;
  required_gb: number;
  source: string;
  waited_seconds: number;
  queue_position: number;
}

/** A job as `GET .../jobs` lists it and as every event carries it. */
export interface Job {
  job_id: string;
  session_id: string;
  status: JobStatus;
  progress: number;
  current_file: string | null;
  files_completed: number;
  files_total: number;
  files_converted: number;
  files_failed: number;
  created_at: string;
  started_at: string | null;
  completed_at: string | null;
  error: string | null;
  eta_seconds: number | null;
  eta_human: string | null;
  memory_required_gb: number;
  /** Only while `status` is `waiting_for_memory`. */
  memory_status?: MemoryStatus;
}

export interface DocumentOutcome {
  document_id: string;
  status: DocumentStatus;
  error: string | null;
  duration_seconds: number | null;
  result: Record<string, unknown> | null;
}

/** `POST .../jobs`, `GET .../jobs/{job_id}` and `POST .../cancel` answer this. */
export interface JobDetail extends Job {
  documents: DocumentOutcome[];
}

export interface Session {
  session_id: string;
  token: string;
  expires_at: string;
}

/** One document of `POST .../documents` and `GET .../documents`. */
export interface UploadedDocument {
  document_id: string;
  /** The client's name for the file, sanitized. */
  filename: string;
  size_bytes: number;
  pages: number;
}

export interface ErrorBody {
  error: { code: string; message: string };
}

export interface SnapshotMessage {
  type: "snapshot";
  cursor: string;
  /** True when the cursor sent could not be resumed: replace all you know. */
  reset: boolean;
  jobs: Job[];
}

export interface ResumedMessage {
  type: "resumed";
  cursor: string;
  /** How many missed events follow, before the live ones. */
  replayed: number;
}

interface EventBase<T extends string> {
  type: T;
  cursor: string;
  job_id: string;
  ts: string;
  job: Job;
}

export type JobCreatedEvent = EventBase<"job.created">;
export type JobStartedEvent = EventBase<"job.started">;
export type JobProgressEvent = EventBase<"job.progress">;
export interface JobMemoryWaitEvent extends EventBase<"job.memory_wait"> {
  memory: MemoryStatus;
}
export interface JobMemoryResumedEvent extends EventBase<"job.memory_resumed"> {
  memory: MemoryResumed;
}
export interface JobDocumentConvertedEvent extends EventBase<"job.document_converted"> {
  document: DocumentOutcome;
}
export interface JobDocumentFailedEvent extends EventBase<"job.document_failed"> {
  document: DocumentOutcome;
}
export type JobCompletedEvent = EventBase<"job.completed">;
export type JobFailedEvent = EventBase<"job.failed">;
export type JobCancelledEvent = EventBase<"job.cancelled">;
export type JobRemovedEvent = EventBase<"job.removed">;
/** A shutdown stopped the job, to be resumed at the next start. */
export interface JobSuspendedEvent extends EventBase<"job.suspended"> {
  reason: string;
}
/** A job taken up again after a restart; its ended documents are kept. */
export interface JobResumedEvent extends EventBase<"job.resumed"> {
  reason: string;
  documents_done: number;
}
/** The job's latest change could not be saved; the write is retried. */
export interface JobSaveFailedEvent extends EventBase<"job.save_failed"> {
  error: string;
}

export type JobEvent =
  | JobCreatedEvent
  | JobStartedEvent
  | JobProgressEvent
  | JobMemoryWaitEvent
  | JobMemoryResumedEvent
  | JobDocumentConvertedEvent
  | JobDocumentFailedEvent
  | JobCompletedEvent
  | JobFailedEvent
  | JobCancelledEvent
  | JobRemovedEvent
  | JobSuspendedEvent
  | JobResumedEvent
  | JobSaveFailedEvent;

/** The answer to a `{"type": "ping"}` sent on the WebSocket. */
export interface PongMessage {
  type: "pong";
}

/** The answer to a client message the server could not take. */
export interface ErrorMessage {
  type: "error";
  code: string;
  message: string;
}

/** The last message of an SSE stream that the server ends. */
export interface ClosedMessage {
  type: "closed";
  reason: string;
}

export type ServerMessage =
  | SnapshotMessage
  | ResumedMessage
  | JobEvent
  | PongMessage
  | ErrorMessage
  | ClosedMessage;

export type MessageType = ServerMessage["type"];

// -- the client -----------------------------------------------------------------

/** What the client knows of one job. The object is live: read it, never write it. */
export interface JobState {
  /** The job as of its latest event by time. */
  job: Job;
  /** Its documents, in the job's order once `detailed`; from events before that. */
  documents: Map<string, DocumentOutcome>;
  /** Whether `documents` came from the server since the job appeared or reset. */
  detailed: boolean;
  /** `ts` of the event `job` came from; null for a job from a snapshot. */
  ts: string | null;
  /** `Date.now()` when `job` arrived, to count down `memory_status` from. */
  receivedAt: number;
}

export type ConnectionStatus =
  "idle" | "connecting" | "live" | "reconnecting" | "closed";

export interface ConnectionState {
  status: ConnectionStatus;
  /** The transport in use, or being tried. */
  transport: "websocket" | "sse" | null;
  /** Failed attempts since the connection was last live. */
  attempt: number;
  /** While reconnecting: when the next attempt starts (ms, as Date.now()). */
  retryAt: number | null;
  /** While reconnecting: seconds to that attempt, rounded up, when reported. */
  retryIn: number | null;
  /** Closed because the server refused the token or session, for good. */
  refused: boolean;
  /** Why it closed: the server's error for a refusal. */
  error: { status: number; code: string; message: string } | null;
}

export interface JobChange {
  jobId: string;
  /** The job's state after the change; null once it is gone. */
  state: JobState | null;
  /** The message that changed it; null when its documents were loaded. */
  message: ServerMessage | null;
  reason: "event" | "snapshot" | "documents";
}

export interface BackoffOptions {
  /** Milliseconds before the first retry. Default 500. */
  initial?: number;
  /** Default 2. */
  factor?: number;
  /** Milliseconds at most. Default 30000. */
  max?: number;
  /** The fraction of a delay taken off at random, in [0, 1). Default 0.5. */
  jitter?: number;
}

/**
 * What the client uses of a WebSocket: the browser's has it, and so has the
 * `ws` package's under Node. Events are loosely typed so that both fit.
 */
export interface WebSocketLike {
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** What the client uses of an EventSource. */
export interface EventSourceLike {
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  close(): void;
}

export interface StreamerOptions {
  sessionId: string;
  token: string;
  /** The server's root; by default the page's location. */
  baseUrl?: string | URL;
  /** By default the global one; pass `ws`'s under Node 20. */
  WebSocket?: (new (url: string) => WebSocketLike) | undefined;
  /** By default the global one; undefined never to use SSE. */
  EventSource?: (new (url: string) => EventSourceLike) | undefined;
  fetch?: typeof fetch;
  /** "auto" (the default) uses SSE after `fallbackAfter` failed sockets. */
  transport?: "auto" | "websocket" | "sse";
  backoff?: BackoffOptions;
  /** In [0, 1), for the jitter; Math.random by default. */
  random?: () => number;
  /** Milliseconds between the socket's pings; silence for one is death. */
  pingInterval?: number;
  /** WebSocket failures, with the server up, before SSE is tried. Default 2. */
  fallbackAfter?: number;
  /** Fetch each job's documents when it appears and when it ends. */
  loadDocuments?: boolean;
}

type Listener<T> = (value: T) => void;
type Unsubscribe = () => void;
type MessageOfType<T extends MessageType> = Extract<ServerMessage, { type: T }>;

export declare class Streamer {
  constructor(options: StreamerOptions);
  readonly api: SessionApi;
  readonly state: ConnectionState;
  /** Every job of the session, oldest first. */
  readonly jobs: JobState[];
  /** The cursor of the last event applied. */
  readonly cursor: string | null;
  job(jobId: string): JobState | null;
  statistics(): Readonly<{
    messages: number;
    applied: number;
    skipped: number;
    connections: number;
  }>;
  on<T extends MessageType>(type: T, listener: Listener<MessageOfType<T>>): Unsubscribe;
  on(type: "*", listener: Listener<ServerMessage>): Unsubscribe;
  /** A job id, or "*" for every job. */
  onJob(jobId: string, listener: Listener<JobChange>): Unsubscribe;
  onState(listener: Listener<ConnectionState>): Unsubscribe;
  connect(): this;
  close(): void;
  loadDocuments(jobId: string): Promise<JobState | null>;
}

export declare class SessionApi {
  constructor(options: {
    sessionId: string;
    token: string;
    baseUrl?: string | URL;
    fetch?: typeof fetch;
  });
  readonly sessionId: string;
  url(path: string): URL;
  request(path: string, init?: RequestInit): Promise<Response>;
  listJobs(): Promise<Job[]>;
  getJob(jobId: string): Promise<JobDetail>;
  createJob(documentIds: string[]): Promise<JobDetail>;
  cancelJob(jobId: string): Promise<JobDetail>;
  removeJob(jobId: string): Promise<null>;
  listDocuments(): Promise<UploadedDocument[]>;
  uploadDocuments(
    files: Iterable<Blob & { name: string }>,
  ): Promise<UploadedDocument[]>;
  fetchResult(jobId: string, documentId: string): Promise<Response>;
}

export declare class ApiError extends Error {
  readonly status: number;
  readonly code: string;
}

export declare function createSession(options?: {
  baseUrl?: string | URL;
  fetch?: typeof fetch;
  adminKey?: string;
}): Promise<Session>;

export declare class Backoff {
  constructor(options?: BackoffOptions, random?: () => number);
  delay(attempt: number): number;
}

export interface ApplyResult {
  applied: boolean;
  changed: string[];
  replaced: boolean;
}

export declare class JobStore {
  readonly jobs: Map<string, JobState>;
  readonly cursor: string | null;
  apply(message: ServerMessage, now?: number): ApplyResult;
  mergeDocuments(jobId: string, documents: DocumentOutcome[]): boolean;
}

export declare function parseCursor(
  cursor: string,
): { epoch: string; seq: number } | null;
export declare function isFinal(status: JobStatus): boolean;
