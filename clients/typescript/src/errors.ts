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
 * {@link ProtocolError}, {@link LocalIoError}). Every code the daemon sends
 * also has its own class ({@link UnknownPool}, {@link BlobNotFound}, …, a
 * {@link Refused} or a {@link RequestError}), listed in {@link ERROR_CODES}
 * with one entry per row of proto-docs/errors.md.
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


/** A code the daemon sends (see {@link ERROR_CODES}). */
export type ErrorCode =
  | "invalid_handshake"
  | "unsupported_protocol"
  | "unknown_channel"
  | "channel_unavailable"
  | "handshake_timeout"
  | "too_many_connections"
  | "permission_denied"
  | "shutting_down"
  | "frame_too_large"
  | "idle_timeout"
  | "malformed_json"
  | "unknown_request"
  | "invalid_request"
  | "internal"
  | "response_too_large"
  | "unknown_pool"
  | "unknown_lease"
  | "take_timeout"
  | "build_failed"
  | "invalid_definition"
  | "not_runtime_defined"
  | "too_many_pools"
  | "job_not_found"
  | "idempotency_conflict"
  | "job_finished"
  | "job_not_dead"
  | "input_too_large"
  | "command_too_large"
  | "store_failed"
  | "blob_not_found"
  | "hash_mismatch"
  | "size_mismatch"
  | "blob_too_large"
  | "blob_pinned"
  | "range_not_satisfiable"
  | "storage_full"
  | "unknown_process"
  | "too_many_processes"
  | "start_failed"
  | "restart_storm"
  | "not_ready"
  | "invalid_doc_name"
  | "too_many_docs"
  | "room_full"
  | "doc_not_found"
  | "no_document"
  | "invalid_sync_message"
  | "sync_message_too_large"
  | "path_not_found"
  | "not_a_container"
  | "wrong_type"
  | "value_too_large"
  | "doc_too_large"
  | "unknown_revision"
  | "view_too_large"
  | "room_closed"
  | "peer_too_slow";

/** A known code, or any other string (a newer daemon's). */
// `string & {}` keeps editors suggesting the known codes.
export type AnyErrorCode = ErrorCode | (string & {});

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
  constructor(
    message = "the daemon closed the connection",
    cause?: unknown,
    /** The error the daemon said it closed the connection with, unasked (`idle_timeout`, `shutting_down`). */
    readonly daemonError?: WireError,
  ) {
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

// --- one class per code ----------------------------------------------------
//
// In the order of proto-docs/errors.md. A code sent only in handshakes is a
// Refused, one sent only as a request's answer a RequestError. The two sent
// in both places (shutting_down, frame_too_large, invalid_doc_name) are raised as a Refused or
// a RequestError according to where they came from; their own class matches
// either with `instanceof`.

/** `invalid_handshake`: the first frame is not `{"channel": ..., "protocol": ...}`. */
export class InvalidHandshake extends Refused {}
/** `unsupported_protocol`: the daemon speaks another protocol version; upgrade the older side. */
export class UnsupportedProtocol extends Refused {}
/** `unknown_channel`: no such channel. */
export class UnknownChannel extends Refused {}
/** `channel_unavailable`: the daemon does not serve this channel (`status` says why). */
export class ChannelUnavailable extends Refused {}
/** `handshake_timeout`: no complete handshake within the deadline. */
export class HandshakeTimeout extends Refused {}
/** `too_many_connections`: the daemon serves its maximum of connections; retry with backoff. */
export class TooManyConnections extends Refused {}
/** `permission_denied`: the peer is another user. */
export class PermissionDenied extends Refused {}
/** `shutting_down`: the daemon is stopping; retry after it restarts. Matches a Refused or a RequestError of this code. */
export class ShuttingDown extends RequestError {
  static override [Symbol.hasInstance](value: unknown): boolean {
    return value instanceof HearthError && value.code === "shutting_down";
  }
}
/** `frame_too_large`: a length prefix above the maximum frame size. Matches a Refused or a RequestError of this code. */
export class FrameTooLarge extends RequestError {
  static override [Symbol.hasInstance](value: unknown): boolean {
    return value instanceof HearthError && value.code === "frame_too_large";
  }
}
/** `idle_timeout`: no request for longer than the idle timeout; the connection is closed. */
export class IdleTimeout extends RequestError {}
/** `malformed_json`: the frame is not valid UTF-8 JSON, or nests too deeply. */
export class MalformedJson extends RequestError {}
/** `unknown_request`: the `type` is not a request of this channel. */
export class UnknownRequest extends RequestError {}
/** `invalid_request`: missing, mistyped or out-of-range fields; the message names the field. */
export class InvalidRequest extends RequestError {}
/** `internal`: the daemon failed in a way that is not the request's fault; its log has details. */
export class Internal extends RequestError {}
/** `response_too_large`: the answer would exceed the maximum frame size and was not sent; a change the request asked for was made. */
export class ResponseTooLarge extends RequestError {}
/** `unknown_pool`: no pool of that name is defined. */
export class UnknownPool extends RequestError {}
/** `unknown_lease`: no resource is held under that lease; nothing was touched. */
export class UnknownLease extends RequestError {}
/** `take_timeout`: no resource became ready within the take's timeout. */
export class TakeTimeout extends RequestError {}
/** `build_failed`: the build the take waited for failed; the message has its output. */
export class BuildFailed extends RequestError {}
/** `invalid_definition`: a definition field is missing or out of range. */
export class InvalidDefinition extends RequestError {}
/** `not_runtime_defined`: the pool is defined in config.toml or built in. */
export class NotRuntimeDefined extends RequestError {}
/** `too_many_pools`: the daemon already has its maximum of 64 pools. */
export class TooManyPools extends RequestError {}
/** `job_not_found`: no job has this id. */
export class JobNotFound extends RequestError {}
/** `idempotency_conflict`: the key belongs to a job with a different command, environment, directory or input. */
export class IdempotencyConflict extends RequestError {}
/** `job_finished`: the job already ended, so there is nothing to cancel. */
export class JobFinished extends RequestError {}
/** `job_not_dead`: only dead jobs can be retried or purged. */
export class JobNotDead extends RequestError {}
/** `input_too_large`: the job's input is larger than `queue.max_input`. */
export class InputTooLarge extends RequestError {}
/** `command_too_large`: the job's argv, env and cwd are more than a job may hold or the system can execute. */
export class CommandTooLarge extends RequestError {}
/** `store_failed`: the queue's store could not commit or read; nothing was changed. */
export class StoreFailed extends RequestError {}
/** `blob_not_found`: no blob with that hash is stored. */
export class BlobNotFound extends RequestError {}
/** `hash_mismatch`: the data does not hash to the announced `sha256`; nothing was stored. */
export class HashMismatch extends RequestError {}
/** `size_mismatch`: the data is longer or shorter than the announced `size`; nothing was stored. */
export class SizeMismatch extends RequestError {}
/** `blob_too_large`: the blob exceeds `blob.max_blob_size`; nothing was stored. */
export class BlobTooLarge extends RequestError {}
/** `blob_pinned`: unpin the blob first, or delete it with `force`. */
export class BlobPinned extends RequestError {}
/** `range_not_satisfiable`: the offset is past the end of the blob. */
export class RangeNotSatisfiable extends RequestError {}
/** `storage_full`: the store's filesystem is full or over quota; nothing was stored. */
export class StorageFull extends RequestError {}
/** `unknown_process`: No process of that name (or with that label) is defined. */
export class UnknownProcess extends RequestError {}
/** `too_many_processes`: The daemon already supervises `process.max_processes` processes. */
export class TooManyProcesses extends RequestError {}
/** `start_failed`: A supervised process could not be started, or failed before it was ready; the message says how. */
export class ProcessStartFailed extends RequestError {}
/** `restart_storm`: The process was restarted `max_restarts` times within its window and is now `failed`. */
export class RestartStorm extends RequestError {}
/** `not_ready`: A process did not become ready within its start timeout; a rolling restart stops there. */
export class NotReady extends RequestError {}
/** `invalid_doc_name`: a document name breaks the rules of proto-docs/sync.md (lowercase segments, no `..`, no leading `.`). Matches a Refused or a RequestError of this code. */
export class InvalidDocName extends RequestError {
  static override [Symbol.hasInstance](value: unknown): boolean {
    return value instanceof HearthError && value.code === "invalid_doc_name";
  }
}
/** `too_many_docs`: the sync store holds `sync.max_docs` documents; creating another is refused. */
export class TooManyDocs extends Refused {}
/** `room_full`: the room has `sync.max_peers_per_room` peers. */
export class RoomFull extends Refused {}
/** `doc_not_found`: no sync document has this name. */
export class DocNotFound extends RequestError {}
/** `no_document`: a request that needs a document, on a control connection. */
export class NoDocument extends RequestError {}
/** `invalid_sync_message`: a binary frame that is not an Automerge sync message, or whose changes do not apply. */
export class InvalidSyncMessage extends RequestError {}
/** `sync_message_too_large`: a sync message larger than `sync.max_sync_message`. */
export class SyncMessageTooLarge extends RequestError {}
/** `path_not_found`: a path step does not exist (or an index is past the end); nothing of the write was applied. */
export class PathNotFound extends RequestError {}
/** `not_a_container`: a path goes through a scalar as if it were a map or list. */
export class NotAContainer extends RequestError {}
/** `wrong_type`: the operation does not fit what the path names (a key into a list, a splice of a non-text...). */
export class WrongType extends RequestError {}
/** `value_too_large`: a value over `sync.max_value_size`, or nested deeper than 64 levels. */
export class ValueTooLarge extends RequestError {}
/** `doc_too_large`: the document is at `sync.max_doc_size`; nothing was applied. */
export class DocTooLarge extends RequestError {}
/** `unknown_revision`: a revision names a change the document does not have. */
export class UnknownRevision extends RequestError {}
/** `view_too_large`: the answer would not fit in one frame; read a smaller path. */
export class ViewTooLarge extends RequestError {}
/** `room_closed`: the room was closed (`close`, or a failed store); reconnect to load it again. */
export class RoomClosed extends RequestError {}
/** `peer_too_slow`: the peer took no frame for `sync.peer_write_timeout` and was disconnected. */
export class PeerTooSlow extends RequestError {}

/** What a code is: where the daemon sends it, what happens to the connection, and its class. */
export interface ErrorCodeEntry extends ErrorCodeInfo {
  readonly error: typeof Refused | typeof RequestError;
}

/**
 * Every error code the daemon sends, exactly the rows of proto-docs/errors.md
 * (a test compares the two). A code missing here (from a newer daemon) is
 * still reported, as a plain {@link RequestError} or {@link Refused} with
 * that code.
 */
export const ERROR_CODES: { readonly [code in ErrorCode]: ErrorCodeEntry } = {
  invalid_handshake: { sent: "handshake", connection: "closed", error: InvalidHandshake },
  unsupported_protocol: { sent: "handshake", connection: "closed", error: UnsupportedProtocol },
  unknown_channel: { sent: "handshake", connection: "closed", error: UnknownChannel },
  channel_unavailable: { sent: "handshake", connection: "closed", error: ChannelUnavailable },
  handshake_timeout: { sent: "handshake", connection: "closed", error: HandshakeTimeout },
  too_many_connections: { sent: "handshake", connection: "closed", error: TooManyConnections },
  permission_denied: { sent: "handshake", connection: "closed", error: PermissionDenied },
  shutting_down: { sent: "both", connection: "closed", error: ShuttingDown },
  frame_too_large: { sent: "both", connection: "closed", error: FrameTooLarge },
  idle_timeout: { sent: "request", connection: "closed", error: IdleTimeout },
  malformed_json: { sent: "request", connection: "usable", error: MalformedJson },
  unknown_request: { sent: "request", connection: "usable", error: UnknownRequest },
  invalid_request: { sent: "request", connection: "usable", error: InvalidRequest },
  internal: { sent: "request", connection: "usable", error: Internal },
  response_too_large: { sent: "request", connection: "usable", error: ResponseTooLarge },
  unknown_pool: { sent: "request", connection: "usable", error: UnknownPool },
  unknown_lease: { sent: "request", connection: "usable", error: UnknownLease },
  take_timeout: { sent: "request", connection: "usable", error: TakeTimeout },
  build_failed: { sent: "request", connection: "usable", error: BuildFailed },
  invalid_definition: { sent: "request", connection: "usable", error: InvalidDefinition },
  not_runtime_defined: { sent: "request", connection: "usable", error: NotRuntimeDefined },
  too_many_pools: { sent: "request", connection: "usable", error: TooManyPools },
  job_not_found: { sent: "request", connection: "usable", error: JobNotFound },
  idempotency_conflict: { sent: "request", connection: "usable", error: IdempotencyConflict },
  job_finished: { sent: "request", connection: "usable", error: JobFinished },
  job_not_dead: { sent: "request", connection: "usable", error: JobNotDead },
  input_too_large: { sent: "request", connection: "usable", error: InputTooLarge },
  command_too_large: { sent: "request", connection: "usable", error: CommandTooLarge },
  store_failed: { sent: "request", connection: "usable", error: StoreFailed },
  blob_not_found: { sent: "request", connection: "usable", error: BlobNotFound },
  hash_mismatch: { sent: "request", connection: "usable", error: HashMismatch },
  size_mismatch: { sent: "request", connection: "usable", error: SizeMismatch },
  blob_too_large: { sent: "request", connection: "usable", error: BlobTooLarge },
  blob_pinned: { sent: "request", connection: "usable", error: BlobPinned },
  range_not_satisfiable: { sent: "request", connection: "usable", error: RangeNotSatisfiable },
  storage_full: { sent: "request", connection: "usable", error: StorageFull },
  unknown_process: { sent: "request", connection: "usable", error: UnknownProcess },
  too_many_processes: { sent: "request", connection: "usable", error: TooManyProcesses },
  start_failed: { sent: "request", connection: "usable", error: ProcessStartFailed },
  restart_storm: { sent: "request", connection: "usable", error: RestartStorm },
  not_ready: { sent: "request", connection: "usable", error: NotReady },
  invalid_doc_name: { sent: "both", connection: "usable", error: InvalidDocName },
  too_many_docs: { sent: "handshake", connection: "closed", error: TooManyDocs },
  room_full: { sent: "handshake", connection: "closed", error: RoomFull },
  doc_not_found: { sent: "request", connection: "usable", error: DocNotFound },
  no_document: { sent: "request", connection: "usable", error: NoDocument },
  invalid_sync_message: { sent: "request", connection: "usable", error: InvalidSyncMessage },
  sync_message_too_large: { sent: "request", connection: "usable", error: SyncMessageTooLarge },
  path_not_found: { sent: "request", connection: "usable", error: PathNotFound },
  not_a_container: { sent: "request", connection: "usable", error: NotAContainer },
  wrong_type: { sent: "request", connection: "usable", error: WrongType },
  value_too_large: { sent: "request", connection: "usable", error: ValueTooLarge },
  doc_too_large: { sent: "request", connection: "usable", error: DocTooLarge },
  unknown_revision: { sent: "request", connection: "usable", error: UnknownRevision },
  view_too_large: { sent: "request", connection: "usable", error: ViewTooLarge },
  room_closed: { sent: "request", connection: "closed", error: RoomClosed },
  peer_too_slow: { sent: "request", connection: "closed", error: PeerTooSlow },
};

/** Whether `code` is one this library knows. */
export function isKnownErrorCode(code: string): code is ErrorCode {
  return Object.prototype.hasOwnProperty.call(ERROR_CODES, code);
}

/** The error a failed request's `{"type": "error", ...}` answer stands for: its code's class. */
export function requestError(wire: WireError): RequestError {
  const entry = isKnownErrorCode(wire.code) ? ERROR_CODES[wire.code] : undefined;
  const Class = entry && entry.sent !== "handshake" ? (entry.error as typeof RequestError) : RequestError;
  return new Class(wire.code, wire.message);
}

/** The error a refused handshake stands for: its code's class. */
export function refusal(wire: WireError, daemon?: DaemonIdent): Refused {
  const entry = isKnownErrorCode(wire.code) ? ERROR_CODES[wire.code] : undefined;
  const Class = entry && entry.sent === "handshake" ? (entry.error as typeof Refused) : Refused;
  return new Class(wire.code, wire.message, daemon);
}

function causeText(cause: unknown): string {
  if (cause instanceof Error) return `: ${cause.message}`;
  return cause === undefined ? "" : `: ${String(cause)}`;
}
