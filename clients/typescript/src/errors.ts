/**
 * Every failure is a {@link HearthError} with a stable snake_case `code`.
 *
 * Its subclasses are the families a caller branches on:
 *
 * | class | `code` | when |
 * |-------|--------|------|
 * | {@link NotRunning} | `not_running` | nothing listens on the socket |
 * | {@link Refused} | the daemon's (`unknown_channel`, `too_many_connections`, …) | the daemon refused the handshake |
 * | {@link RequestError} | the daemon's (`unknown_pool`, `blob_not_found`, …) | a request failed; see {@link RequestError.connectionUsable} |
 * | {@link Timeout} | `timeout` | no answer within a deadline |
 * | {@link StartFailed} | the daemon's start-up code (`config_invalid`, …) | `hearthd` ran but could not start |
 * | {@link ConnectionClosed} | `connection_closed` | the connection ended (the daemon stopped or died, or a call on it was aborted) |
 * | {@link Aborted} | `aborted` | the caller's `AbortSignal` fired |
 *
 * and a few rarer ones ({@link ConnectFailed}, {@link ForeignDaemon},
 * {@link PathError}, {@link DaemonNotFound}, {@link SpawnFailed},
 * {@link ProtocolError}, {@link LocalIoError}). Codes the daemon sends are
 * listed in {@link ERROR_CODES}, one entry per row of proto-docs/errors.md.
 *
 * @module
 */

/** Where the daemon sends a code, and what happens to the connection after. */
export interface ErrorCodeInfo {
  /** `handshake`: as a refused handshake; `request`: as a request's answer; `both`. */
  readonly sent: "handshake" | "request" | "both";
  /** Whether the daemon closes the connection after sending it. */
  readonly connection: "closed" | "usable";
}

/**
 * Every error code the daemon sends, exactly the rows of proto-docs/errors.md
 * (a test compares the two). A code missing here (from a newer daemon) is
 * still reported, as a {@link RequestError} or {@link Refused} with that code.
 */
export const ERROR_CODES = {
  invalid_handshake: { sent: "handshake", connection: "closed" },
  unsupported_protocol: { sent: "handshake", connection: "closed" },
  unknown_channel: { sent: "handshake", connection: "closed" },
  channel_unavailable: { sent: "handshake", connection: "closed" },
  handshake_timeout: { sent: "handshake", connection: "closed" },
  too_many_connections: { sent: "handshake", connection: "closed" },
  permission_denied: { sent: "handshake", connection: "closed" },
  shutting_down: { sent: "both", connection: "closed" },
  frame_too_large: { sent: "both", connection: "closed" },
  idle_timeout: { sent: "request", connection: "closed" },
  malformed_json: { sent: "request", connection: "usable" },
  unknown_request: { sent: "request", connection: "usable" },
  invalid_request: { sent: "request", connection: "usable" },
  internal: { sent: "request", connection: "usable" },
  unknown_pool: { sent: "request", connection: "usable" },
  unknown_lease: { sent: "request", connection: "usable" },
  take_timeout: { sent: "request", connection: "usable" },
  build_failed: { sent: "request", connection: "usable" },
  invalid_definition: { sent: "request", connection: "usable" },
  not_runtime_defined: { sent: "request", connection: "usable" },
  too_many_pools: { sent: "request", connection: "usable" },
  job_not_found: { sent: "request", connection: "usable" },
  idempotency_conflict: { sent: "request", connection: "usable" },
  job_finished: { sent: "request", connection: "usable" },
  job_not_dead: { sent: "request", connection: "usable" },
  input_too_large: { sent: "request", connection: "usable" },
  store_failed: { sent: "request", connection: "usable" },
  blob_not_found: { sent: "request", connection: "usable" },
  hash_mismatch: { sent: "request", connection: "usable" },
  size_mismatch: { sent: "request", connection: "usable" },
  blob_too_large: { sent: "request", connection: "usable" },
  blob_pinned: { sent: "request", connection: "usable" },
  range_not_satisfiable: { sent: "request", connection: "usable" },
  storage_full: { sent: "request", connection: "usable" },
} as const satisfies Record<string, ErrorCodeInfo>;

/** A code the daemon sends (see {@link ERROR_CODES}). */
export type ErrorCode = keyof typeof ERROR_CODES;

/** A known code, or any other string (a newer daemon's). */
// `string & {}` keeps editors suggesting the known codes.
export type AnyErrorCode = ErrorCode | (string & {});

/** Whether `code` is one this library knows. */
export function isKnownErrorCode(code: string): code is ErrorCode {
  return Object.prototype.hasOwnProperty.call(ERROR_CODES, code);
}

/** The error object of the wire: `{"code": ..., "message": ...}`. */
export interface WireError {
  code: AnyErrorCode;
  message: string;
}

/** The daemon that answered a handshake. */
export interface DaemonIdent {
  version: string;
  pid: number;
}

/** Base class of every error this library raises. */
export class HearthError extends Error {
  /** A stable snake_case code; branch on it (or on the class), never on `message`. */
  readonly code: AnyErrorCode;

  constructor(code: AnyErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }

  override get name(): string {
    return this.constructor.name;
  }
}

/** Nothing listens on the socket (it is missing, or stale). */
export class NotRunning extends HearthError {
  constructor(
    readonly socket: string,
    cause?: unknown,
  ) {
    super("not_running", `no daemon is running at ${socket}${causeText(cause)}`, { cause });
  }
}

/** The socket exists but cannot be connected to (e.g. its permissions). */
export class ConnectFailed extends HearthError {
  constructor(
    readonly socket: string,
    cause?: unknown,
  ) {
    super("connect_failed", `cannot connect to ${socket}${causeText(cause)}`, { cause });
  }
}

/**
 * The socket belongs to another user: nothing was sent to it. (A socket in
 * a directory others can write may be theirs.)
 */
export class ForeignDaemon extends HearthError {
  constructor(
    readonly socket: string,
    readonly uid: number,
    readonly me: number,
  ) {
    super(
      "daemon_of_another_user",
      `refusing to talk to the daemon at ${socket}: the socket belongs to uid ${uid}, not to you (uid ${me})`,
    );
  }
}

/** A path is unusable: no home directory to default to, or a socket path too long. */
export class PathError extends HearthError {}

/** The daemon refused the handshake; the connection is closed. */
export class Refused extends HearthError {
  constructor(
    code: AnyErrorCode,
    message: string,
    /** Who refused, when the daemon said. */
    readonly daemon?: DaemonIdent,
  ) {
    super(code, `the daemon refused the connection: ${message} (${code})`);
    this.wireMessage = message;
  }
  /** The daemon's own message. */
  readonly wireMessage: string;
}

/** A request failed with the daemon's error code. */
export class RequestError extends HearthError {
  /** The daemon's own message. */
  readonly wireMessage: string;

  constructor(code: AnyErrorCode, message: string) {
    super(code, `${message} (${code})`);
    this.wireMessage = message;
  }

  /**
   * Whether the daemon keeps the connection open after this code (per
   * proto-docs/errors.md). Unknown codes count as usable: the daemon closes
   * a connection only with the codes that say so.
   */
  get connectionUsable(): boolean {
    return isKnownErrorCode(this.code) ? ERROR_CODES[this.code].connection === "usable" : true;
  }
}

/** No answer within a deadline. */
export class Timeout extends HearthError {
  constructor(
    readonly what: string,
    /** The deadline, when this library set it (not for an `AbortSignal.timeout()`). */
    readonly afterMs?: number,
    cause?: unknown,
  ) {
    super("timeout", `timed out ${afterMs === undefined ? "" : `after ${afterMs} ms `}waiting for ${what}`, { cause });
  }
}

/** `hearthd` ran but could not start; `code` and `message` are its own. */
export class StartFailed extends HearthError {
  /** The daemon's own message. */
  readonly wireMessage: string;

  constructor(code: string, message: string) {
    super(code, `hearthd could not start: ${message} (${code})`);
    this.wireMessage = message;
  }
}

/** The connection ended: the daemon closed it or died, or a call on it was aborted. */
export class ConnectionClosed extends HearthError {
  constructor(message = "the daemon closed the connection", cause?: unknown) {
    super("connection_closed", message, { cause });
  }
}

/**
 * The caller's `AbortSignal` fired. If the call had begun talking to the
 * daemon, its connection is closed (so no late answer can be taken for the
 * next call's), and later calls on it fail with {@link ConnectionClosed}.
 */
export class Aborted extends HearthError {
  constructor(what: string, cause?: unknown) {
    super("aborted", `${what} was aborted`, { cause });
  }
  override get name(): string {
    return "AbortError";
  }
}

/** The daemon answered something this client cannot understand. */
export class ProtocolError extends HearthError {
  constructor(message: string) {
    super("protocol_error", `unexpected answer from the daemon: ${message}`);
  }
}

/** `hearthd` could not be found. */
export class DaemonNotFound extends HearthError {
  constructor(readonly searched: string) {
    super(
      "daemon_binary_not_found",
      `cannot find the hearthd binary (looked at: ${searched}); pass daemonBin or set HEARTH_DAEMON_BIN`,
    );
  }
}

/** `hearthd` could not be executed. */
export class SpawnFailed extends HearthError {
  constructor(
    readonly bin: string,
    cause: unknown,
  ) {
    super("spawn_failed", `cannot run ${bin}${causeText(cause)}`, { cause });
  }
}

/** Reading the source of an upload or writing the destination of a download failed (the local side). */
export class LocalIoError extends HearthError {
  constructor(what: string, cause: unknown) {
    super("io_error", `${what}${causeText(cause)}`, { cause });
  }
}

/** The error a failed request's `{"type": "error", ...}` answer stands for. */
export function requestError(wire: WireError): RequestError {
  return new RequestError(wire.code, wire.message);
}

function causeText(cause: unknown): string {
  if (cause instanceof Error) return `: ${cause.message}`;
  return cause === undefined ? "" : `: ${String(cause)}`;
}
