/**
 * One connection to the daemon: the socket, the framing, the handshake, and
 * the rule that keeps requests and answers paired.
 *
 * A channel client (status, pool, queue, blob, …) owns one `Connection`
 * and talks through {@link Exchange}s: an exchange holds the connection
 * exclusively from its request to its last answer (one frame for `ping`,
 * a stream of frames for `wait` or a blob `get`). Calls made while one runs
 * wait their turn, in order.
 *
 * An exchange that ends before its last answer has arrived (its
 * `AbortSignal` fired, the caller stopped iterating a stream, the local
 * side of a transfer failed) closes the connection: an answer still on its
 * way could otherwise be read as the next call's. Later calls then fail
 * with {@link ConnectionClosed}, saying why.
 *
 * @module
 */

import { stat } from "node:fs/promises";
import { connect as netConnect, type Socket } from "node:net";

import {
  Aborted,
  ConnectFailed,
  ConnectionClosed,
  type DaemonIdent,
  ForeignDaemon,
  HearthError,
  NotRunning,
  ProtocolError,
  type RequestError,
  Timeout,
  refusal,
  requestError,
  type WireError,
} from "./errors.js";
import { DEFAULT_MAX_FRAME, FrameDecoder, FrameTooLargeError, encodeJsonFrame, frameHeader } from "./framing.js";
import { checkSocketPath, resolvePaths } from "./paths.js";
import { VERSION } from "./version.js";

/** The protocol version this library speaks. */
export const PROTOCOL_VERSION = 1;

/** This library's `client` string in handshakes. */
export const DEFAULT_CLIENT_NAME = `hearth-client-ts/${VERSION}`;

/** The default deadline for connect plus handshake. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;

/**
 * Frames queued unread before the socket stops reading (keeps a slow
 * consumer's memory flat): bytes bound large frames (a blob's), the count
 * small ones (an event stream's, each a few hundred bytes and an object), so
 * that a slow event subscriber soon leaves its backlog to the daemon, which
 * then tells it what it missed rather than queueing tens of thousands here.
 */
const QUEUE_HIGH_WATER = 4 * 1024 * 1024;
const QUEUE_LOW_WATER = 1024 * 1024;
const QUEUE_HIGH_FRAMES = 1024;
const QUEUE_LOW_FRAMES = 256;
/** Data-frame bytes a transfer may queue in the socket's buffer before it waits for it to drain. */
const WRITE_AHEAD = 2 * 1024 * 1024;

/** How to reach the daemon. */
export interface ConnectOptions {
  /** The socket; else `HEARTH_SOCKET`, else `<stateDir>/hearth.sock`. */
  socket?: string;
  /** The state directory; else `HEARTH_STATE_DIR`, else the platform default. */
  stateDir?: string;
  /** `<name>/<version>` sent in the handshake (the daemon logs it; pool leases record it). */
  clientName?: string;
  /** Deadline for connect plus handshake (default 5000 ms); {@link Timeout} after it. */
  timeoutMs?: number;
  /** Cancels the connect. */
  signal?: AbortSignal;
}

/** Options every call takes. */
export interface CallOptions {
  /**
   * Cancels the call. A call aborted after it began talking to the daemon
   * closes its connection (see {@link Aborted}). A signal made by
   * `AbortSignal.timeout()` rejects with {@link Timeout} instead.
   */
  signal?: AbortSignal;
}

/** The handshake's accepted reply. */
export interface Accepted {
  ok: true;
  protocol: number;
  daemon: DaemonIdent;
  channel: string;
  max_frame: number;
  [field: string]: unknown;
}

/** A JSON response of any channel. */
export interface AnyResponse {
  type: string;
  [field: string]: unknown;
}

interface Waiter {
  resolve(frame: Buffer): void;
  reject(error: unknown): void;
}

/** A socket with frames on it, handshaked onto one channel. */
export class Connection {
  /** The daemon that accepted the handshake. */
  readonly daemon: DaemonIdent;
  /** The largest frame the daemon accepts on this connection (and sends). */
  readonly maxFrame: number;
  /** The whole accepted handshake reply (channels may add fields). */
  readonly accepted: Accepted;

  private readonly frames: Buffer[] = [];
  private queuedBytes = 0;
  private waiter: Waiter | undefined;
  private arrivals: Array<() => void> = [];
  private closeError: ConnectionClosed | undefined;
  /** An error frame the daemon sent while no exchange was in flight (idle_timeout, shutting_down). */
  private unsolicited: WireError | undefined;
  private current: Exchange | undefined;
  private readonly queue: Array<{ start(): void; cancel(): void }> = [];
  private paused = false;

  private constructor(
    private readonly socket: Socket,
    private readonly decoder: FrameDecoder,
    readonly channel: string,
    readonly socketPath: string,
    accepted: Accepted,
    buffered: Buffer[],
  ) {
    this.accepted = accepted;
    this.daemon = accepted.daemon;
    this.maxFrame = accepted.max_frame;
    decoder.maxFrame = accepted.max_frame;
    // Frames that came right behind the reply (the sync channel's `joined`)
    // wait for the first exchange, which asks for them.
    for (const frame of buffered) {
      this.frames.push(frame);
      this.queuedBytes += frame.length;
    }
    // An idle connection does not keep the process alive; a call in flight does.
    socket.unref();
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (error) => this.onClose(error));
    socket.on("close", () => this.onClose(undefined));
  }

  /**
   * Connects to the daemon and completes the handshake for `channel`.
   * `extra` adds fields to the handshake, or replaces them (a channel that
   * takes more, like sync's `doc`); a field set to `null` is left out.
   */
  static async open(channel: string, options: ConnectOptions = {}, extra?: Record<string, unknown>): Promise<Connection> {
    const paths = resolvePaths({ stateDir: options.stateDir, socket: options.socket });
    checkSocketPath(paths.socket);
    const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const handshake: Record<string, unknown> = {
      channel,
      protocol: PROTOCOL_VERSION,
      client: options.clientName ?? DEFAULT_CLIENT_NAME,
      ...extra,
    };
    for (const [field, value] of Object.entries(handshake)) if (value === null) delete handshake[field];
    return withDeadline(`connect and handshake on ${paths.socket}`, timeoutMs, options.signal, (onCleanup) =>
      handshakeOn(paths.socket, channel, handshake, onCleanup),
    );
  }

  /** Whether the connection has ended; every later call fails with {@link ConnectionClosed}. */
  get closed(): boolean {
    return this.closeError !== undefined;
  }

  /** Closes the connection. A call in flight fails with {@link ConnectionClosed}. */
  close(): void {
    this.destroy(new ConnectionClosed("the connection was closed by this client"));
  }

  /**
   * Starts an exchange: waits (in order) until the connection is free.
   * `what` names the call in errors.
   */
  begin(what: string, signal: AbortSignal | undefined): Promise<Exchange> {
    if (signal?.aborted) return Promise.reject(abortError(what, signal));
    if (this.closeError) return Promise.reject(this.closeError);
    const now = this.beginNow(what, signal);
    if (now) return Promise.resolve(now);
    return new Promise<Exchange>((resolve, reject) => {
      const entry = {
        start: () => {
          signal?.removeEventListener("abort", onAbort);
          if (this.closeError) reject(this.closeError);
          else resolve(this.startExchange(what, signal));
        },
        cancel: () => {
          signal?.removeEventListener("abort", onAbort);
          reject(this.closeError);
        },
      };
      // Aborted while waiting its turn: nothing was sent, the connection is untouched.
      const onAbort = (): void => {
        const index = this.queue.indexOf(entry);
        if (index >= 0) this.queue.splice(index, 1);
        reject(abortError(what, signal as AbortSignal));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.queue.push(entry);
    });
  }

  /**
   * Starts an exchange at once when the connection is free (and open, and
   * `signal` has not fired); else `undefined`, and {@link begin} waits.
   */
  beginNow(what: string, signal: AbortSignal | undefined): Exchange | undefined {
    if (this.current !== undefined || this.queue.length > 0 || this.closeError || signal?.aborted) return undefined;
    return this.startExchange(what, signal);
  }

  private startExchange(what: string, signal: AbortSignal | undefined): Exchange {
    const exchange = new Exchange(this, what, signal);
    this.current = exchange;
    this.socket.ref();
    return exchange;
  }

  /** @internal Called by an exchange when it ends. */
  exchangeEnded(exchange: Exchange): void {
    if (this.current !== exchange) return;
    this.current = undefined;
    const next = this.queue.shift();
    if (next) next.start();
    else this.socket.unref();
  }

  /** @internal Ends the connection with `error` as the reason later calls see. */
  destroy(error: ConnectionClosed, pendingError: unknown = error): void {
    if (this.closeError === undefined) this.closeError = error;
    this.socket.destroy();
    this.failWaiters(pendingError);
    const queued = this.queue.splice(0);
    for (const entry of queued) entry.cancel();
  }

  // --- reading -------------------------------------------------------------

  private onData(chunk: Buffer): void {
    let frames: Buffer[];
    try {
      frames = this.decoder.push(chunk);
    } catch (error) {
      const message =
        error instanceof FrameTooLargeError ? error.message : `cannot decode a frame: ${String(error)}`;
      const protocolError = new ProtocolError(message);
      this.destroy(new ConnectionClosed(`the connection was closed: ${protocolError.message}`), protocolError);
      return;
    }
    for (const frame of frames) this.enqueue(frame);
  }

  private enqueue(frame: Buffer): void {
    if (this.current === undefined || !this.current.inFlight) {
      // Nothing asked for this frame: the daemon is about to close the
      // connection and says why (idle_timeout, shutting_down).
      this.noteUnsolicited(frame);
      return;
    }
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = undefined;
      waiter.resolve(frame);
    } else {
      this.frames.push(frame);
      this.queuedBytes += frame.length;
      if (!this.paused && (this.queuedBytes > QUEUE_HIGH_WATER || this.frames.length > QUEUE_HIGH_FRAMES)) {
        this.paused = true;
        this.socket.pause();
      }
    }
    this.notifyArrivals();
  }

  private noteUnsolicited(frame: Buffer): void {
    try {
      const value = JSON.parse(frame.toString("utf8")) as Partial<WireError> & { type?: unknown };
      if (value.type === "error" && typeof value.code === "string") {
        this.unsolicited = { code: value.code, message: String(value.message ?? "") };
      }
    } catch {
      // Not JSON: nothing to learn from it; the close that follows is reported anyway.
    }
  }

  private onClose(error: Error | undefined): void {
    if (this.closeError) return;
    const daemonError = this.unsolicited;
    const message = daemonError
      ? `the daemon closed the connection: ${daemonError.message} (${daemonError.code})`
      : error
        ? `the connection to the daemon failed: ${error.message}`
        : "the daemon closed the connection";
    this.closeError = new ConnectionClosed(message, error, daemonError);
    this.socket.destroy();
    // Frames already received are still delivered (a final error frame, the
    // end of a stream); only a read past them fails.
    if (this.waiter) this.failWaiters(this.closeError);
    this.notifyArrivals();
    const queued = this.queue.splice(0);
    for (const entry of queued) entry.cancel();
  }

  private failWaiters(error: unknown): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    if (waiter) waiter.reject(error);
    this.notifyArrivals();
  }

  private notifyArrivals(): void {
    if (this.arrivals.length === 0) return;
    const arrivals = this.arrivals;
    this.arrivals = [];
    for (const arrival of arrivals) arrival();
  }

  /** @internal The next frame, waiting for it. */
  nextFrame(): Promise<Buffer> {
    const frame = this.takeFrame();
    if (frame !== undefined) return Promise.resolve(frame);
    if (this.closeError) return Promise.reject(this.closeError);
    return new Promise<Buffer>((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /** @internal The next frame if one has arrived. */
  takeFrame(): Buffer | undefined {
    const frame = this.frames.shift();
    if (frame === undefined) return undefined;
    this.queuedBytes -= frame.length;
    if (this.paused && this.queuedBytes < QUEUE_LOW_WATER && this.frames.length < QUEUE_LOW_FRAMES) {
      this.paused = false;
      this.socket.resume();
    }
    return frame;
  }

  /**
   * @internal Calls `listener` once a frame has arrived or the connection
   * has ended (at once if so already); returns a function that cancels it.
   * (A listener, not a promise: racing a long-lived promise in a loop keeps
   * every loser's value alive until it settles.)
   */
  onArrival(listener: () => void): () => void {
    if (this.hasArrival()) {
      listener();
      return () => undefined;
    }
    this.arrivals.push(listener);
    return () => {
      const index = this.arrivals.indexOf(listener);
      if (index >= 0) this.arrivals.splice(index, 1);
    };
  }

  /** @internal Whether a frame is waiting, or the connection has ended. */
  hasArrival(): boolean {
    return this.frames.length > 0 || this.closeError !== undefined;
  }

  // --- writing -------------------------------------------------------------

  /** @internal Writes bytes; resolves at once unless the socket's buffer is full. */
  write(bytes: Buffer): Promise<void> | undefined {
    if (this.closeError) return Promise.reject(this.closeError);
    if (this.socket.write(bytes)) return undefined;
    return this.drained();
  }

  /**
   * @internal Writes a data frame (header and payload). Resolves at once
   * while at most {@link WRITE_AHEAD} bytes wait in the socket's buffer, so
   * that the next frame is being read from its source while this one is
   * sent; beyond that, once the buffer has drained.
   */
  writeFrame(payload: Uint8Array): Promise<void> | undefined {
    if (this.closeError) return Promise.reject(this.closeError);
    this.socket.cork();
    this.socket.write(frameHeader(payload.length));
    const flushed = this.socket.write(payload);
    this.socket.uncork();
    return flushed || this.socket.writableLength <= WRITE_AHEAD ? undefined : this.drained();
  }

  private drained(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onDrain = (): void => {
        this.socket.off("close", onGone);
        resolve();
      };
      const onGone = (): void => {
        this.socket.off("drain", onDrain);
        reject(this.closeError ?? new ConnectionClosed());
      };
      this.socket.once("drain", onDrain);
      this.socket.once("close", onGone);
    });
  }

  /** @internal The reason the connection ended, if it has. */
  get closedBecause(): ConnectionClosed | undefined {
    return this.closeError;
  }
}

/**
 * One request and its answers, holding the connection until it ends.
 * Always finish with {@link Exchange.end} (in a `finally`).
 */
export class Exchange {
  /** True from a request until its last answer has been read. */
  inFlight = false;
  private aborted: HearthError | undefined;
  private ended = false;
  private readonly onAbort: (() => void) | undefined;

  /** @internal */
  constructor(
    readonly conn: Connection,
    private readonly what: string,
    private readonly signal: AbortSignal | undefined,
  ) {
    if (signal) {
      this.onAbort = () => this.abort(abortError(what, signal));
      // A signal that fired while the exchange waited its turn fires no more events.
      if (signal.aborted) this.onAbort();
      else signal.addEventListener("abort", this.onAbort, { once: true });
    }
  }

  /** The largest frame the daemon accepts. */
  get maxFrame(): number {
    return this.conn.maxFrame;
  }

  private abort(error: HearthError): void {
    if (this.aborted || this.ended) return;
    this.aborted = error;
    if (this.inFlight) {
      this.conn.destroy(
        new ConnectionClosed(`the connection was closed because ${this.what} was aborted before its answer`, error),
        error,
      );
    }
  }

  private check(): void {
    if (this.aborted) throw this.aborted;
  }

  /** Sends a JSON request; the exchange is in flight until {@link complete}. */
  send(request: object): Promise<void> | undefined {
    this.check();
    const frame = encodeJsonFrame(request);
    if (frame.length - 4 > this.conn.maxFrame) {
      throw new HearthError(
        "frame_too_large",
        `the ${this.what} request is ${frame.length - 4} bytes, above the daemon's maximum frame of ${this.conn.maxFrame}; nothing was sent`,
      );
    }
    this.inFlight = true;
    return this.conn.write(frame);
  }

  /** Sends a raw data frame (blob transfers); an empty one is the end marker. */
  async sendData(payload: Uint8Array): Promise<void> {
    this.check();
    this.inFlight = true;
    await this.conn.writeFrame(payload);
    this.check();
  }

  /** The next frame, raw. */
  async readFrame(): Promise<Buffer> {
    this.check();
    const frame = await this.conn.nextFrame();
    this.check();
    return frame;
  }

  /** The next frame if one has already arrived. */
  pollFrame(): Buffer | undefined {
    this.check();
    return this.conn.takeFrame();
  }

  /** Calls `listener` once a frame has arrived (or the connection ended); returns its cancel. */
  onArrival(listener: () => void): () => void {
    return this.conn.onArrival(listener);
  }

  /** The next frame as a JSON response; `{"type": "error"}` is returned, not thrown. */
  async readResponse(): Promise<AnyResponse> {
    return parseResponse(await this.readFrame());
  }

  /**
   * The next frame as a JSON response; an error answer ends the exchange
   * and is thrown as a {@link RequestError} (closing the connection when
   * the daemon does).
   */
  async readAnswer(): Promise<AnyResponse> {
    return this.streamAnswer(await this.readFrame());
  }

  /** A frame already taken ({@link pollFrame}), as {@link readAnswer} returns it: an error answer is thrown. */
  streamAnswer(frame: Buffer): AnyResponse {
    const response = parseResponse(frame);
    if (response.type === "error") {
      this.complete();
      throw this.errorOf(response);
    }
    return response;
  }

  /** Sends `request` and reads its single answer (see {@link readAnswer}); completes the exchange. */
  request(request: object): Promise<AnyResponse> {
    // Written without `async` layers: this is every simple call's path.
    let sent: Promise<void> | undefined;
    try {
      sent = this.send(request);
    } catch (error) {
      return Promise.reject(error);
    }
    const answer = (): Promise<AnyResponse> => this.conn.nextFrame().then((frame) => this.answerOf(frame));
    return sent ? sent.then(answer) : answer();
  }

  private answerOf(frame: Buffer): AnyResponse {
    this.check();
    const response = parseResponse(frame);
    this.complete();
    if (response.type === "error") throw this.errorOf(response);
    return response;
  }

  /** Turns an error answer into a {@link RequestError}, closing the connection if the daemon closes it. */
  errorOf(response: AnyResponse): RequestError {
    const error = requestError({ code: String(response.code), message: String(response.message ?? "") });
    if (!error.connectionUsable) {
      this.conn.destroy(
        new ConnectionClosed(`the daemon closed the connection: ${error.wireMessage} (${error.code})`, error),
      );
    }
    return error;
  }

  /** Marks the last answer read: the connection is in step again. */
  complete(): void {
    this.inFlight = false;
  }

  /**
   * Ends the exchange. If it is still in flight (it ended early), the
   * connection is closed so that no late answer is read by the next call.
   */
  end(reason?: string): void {
    if (this.ended) return;
    this.ended = true;
    if (this.onAbort) this.signal?.removeEventListener("abort", this.onAbort);
    if (this.inFlight && !this.conn.closed) {
      this.conn.destroy(
        new ConnectionClosed(
          `the connection was closed because ${this.what} ended before its last answer${reason ? ` (${reason})` : ""}`,
        ),
      );
    }
    this.conn.exchangeEnded(this);
  }
}

/** Parses a frame as a JSON response object. */
export function parseResponse(frame: Buffer): AnyResponse {
  let value: unknown;
  try {
    value = JSON.parse(frame.toString("utf8"));
  } catch (error) {
    throw new ProtocolError(`a frame that is not JSON (${frame.length} bytes): ${String(error)}`);
  }
  if (typeof value !== "object" || value === null || typeof (value as AnyResponse).type !== "string") {
    throw new ProtocolError(`a frame without a "type": ${frame.toString("utf8").slice(0, 200)}`);
  }
  return value as AnyResponse;
}

/** The error an answer of the wrong type stands for. */
export function unexpected(expected: string, got: AnyResponse): ProtocolError {
  return new ProtocolError(`expected ${expected}, got ${JSON.stringify(got).slice(0, 200)}`);
}

/** The error for an aborted `what`: {@link Timeout} for `AbortSignal.timeout()`, else {@link Aborted}. */
export function abortError(what: string, signal: AbortSignal): HearthError {
  const reason: unknown = signal.reason;
  if (reason instanceof HearthError) return reason;
  if (reason instanceof Error && reason.name === "TimeoutError") return new Timeout(what, undefined, reason);
  return new Aborted(what, reason);
}

/**
 * Runs `work` within `timeoutMs` and `signal`; on either, the cleanups it
 * registered run (closing its socket) and the promise rejects.
 */
export async function withDeadline<T>(
  what: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  work: (onCleanup: (cleanup: () => void) => void) => Promise<T>,
): Promise<T> {
  if (signal?.aborted) throw abortError(what, signal);
  const cleanups: Array<() => void> = [];
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stopped = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Timeout(what, timeoutMs)), timeoutMs);
    if (signal) {
      onAbort = () => reject(abortError(what, signal));
      signal.addEventListener("abort", onAbort, { once: true });
    }
  });
  const running = work((cleanup) => cleanups.push(cleanup));
  try {
    return await Promise.race([running, stopped]);
  } catch (error) {
    for (const cleanup of cleanups) cleanup();
    running.then((value) => (value as { close?: () => void } | undefined)?.close?.(), () => undefined);
    throw error;
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener("abort", onAbort);
  }
}

async function handshakeOn(
  socketPath: string,
  channel: string,
  handshake: Record<string, unknown>,
  onCleanup: (cleanup: () => void) => void,
): Promise<Connection> {
  await checkSocketOwner(socketPath);
  const socket = netConnect({ path: socketPath });
  onCleanup(() => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", () => {
      socket.off("error", reject);
      resolve();
    });
    socket.once("error", (error: NodeJS.ErrnoException) => {
      socket.destroy();
      reject(
        error.code === "ENOENT" || error.code === "ECONNREFUSED"
          ? new NotRunning(socketPath, error)
          : new ConnectFailed(socketPath, error),
      );
    });
  });
  const decoder = new FrameDecoder(DEFAULT_MAX_FRAME);
  const frames: Buffer[] = [];
  const reply = await new Promise<Buffer>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      try {
        frames.push(...decoder.push(chunk));
      } catch (error) {
        finish();
        reject(new ProtocolError(`bad handshake reply: ${String(error)}`));
        return;
      }
      const first = frames.shift();
      if (first !== undefined) {
        finish();
        resolve(first);
      }
    };
    const onEnd = (error?: Error): void => {
      finish();
      reject(new ConnectionClosed("the daemon closed the connection during the handshake", error));
    };
    const onError = (error: Error): void => onEnd(error);
    const onClose = (): void => onEnd();
    const finish = (): void => {
      socket.off("data", onData);
      socket.off("error", onError);
      socket.off("close", onClose);
    };
    socket.on("data", onData);
    socket.on("error", onError);
    socket.on("close", onClose);
    socket.write(encodeJsonFrame(handshake));
  });
  let value: Record<string, unknown>;
  try {
    value = JSON.parse(reply.toString("utf8")) as Record<string, unknown>;
  } catch (error) {
    socket.destroy();
    throw new ProtocolError(`bad handshake reply: ${String(error)}`);
  }
  if (value.ok === true && typeof value.max_frame === "number" && isDaemonIdent(value.daemon)) {
    // Frames that came with the reply stay queued for the first exchange.
    return new (Connection as unknown as ConnectionCtor)(socket, decoder, channel, socketPath, value as Accepted, frames);
  }
  socket.destroy();
  const error = value.error as Partial<WireError> | undefined;
  if (value.ok === false && error && typeof error.code === "string") {
    throw refusal({ code: error.code, message: String(error.message ?? "") }, isDaemonIdent(value.daemon) ? value.daemon : undefined);
  }
  throw new ProtocolError(`bad handshake reply: ${reply.toString("utf8").slice(0, 200)}`);
}

type ConnectionCtor = new (
  socket: Socket,
  decoder: FrameDecoder,
  channel: string,
  socketPath: string,
  accepted: Accepted,
  buffered: Buffer[],
) => Connection;

function isDaemonIdent(value: unknown): value is DaemonIdent {
  const v = value as DaemonIdent | undefined;
  return typeof v === "object" && v !== null && typeof v.version === "string" && typeof v.pid === "number";
}

/**
 * The daemon serves only the user it runs as, and so must this client:
 * nothing (a job's command line, a blob's bytes) is sent to a socket that
 * another user owns. Node cannot read the peer's credentials, so the
 * socket file's owner stands for the process that bound it.
 */
async function checkSocketOwner(socketPath: string): Promise<void> {
  const me = process.geteuid?.();
  if (me === undefined) return;
  let owner: number;
  try {
    owner = (await stat(socketPath)).uid;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") throw new NotRunning(socketPath, error);
    throw new ConnectFailed(socketPath, error);
  }
  if (owner !== me) throw new ForeignDaemon(socketPath, owner, me);
}
