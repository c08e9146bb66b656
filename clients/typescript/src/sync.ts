/**
 * The `sync` channel in view mode (proto-docs/sync.md): live documents as
 * JSON, shared by every window, with no Automerge library.
 *
 * ```ts
 * const doc = await SyncDoc.open("notebook/3f2a");
 * await doc.put(["title"], "Notes");
 * const cells = await doc.watch(["cells"]); // cells.value: the JSON, kept current
 * for await (const event of cells) {        // changed, snapshot or presence
 *   console.log(cells.revision, cells.value);
 * }
 * ```
 *
 * A **path** is an array of steps from the document's root: a string is a
 * map key, a number a list (or text) index. A **revision** is the
 * document's heads (sorted hex change hashes). A write is answered once it
 * is on disk; a write that names the revision it was read at (`base`) and
 * finds the document moved on is merged, as Automerge merges concurrent
 * edits, and says so (`stale`).
 *
 * One connection carries requests and, after `watch`, events between their
 * answers. Requests may overlap: answers come in order. Events are read
 * only while someone waits for an answer or an event, so a watcher that
 * stops reading leaves its backlog to the daemon, which coalesces it.
 *
 * @module
 */

import {
  type CallOptions,
  type ConnectOptions,
  Connection,
  DEFAULT_CONNECT_TIMEOUT_MS,
  type Exchange,
  abortError,
  parseResponse,
  unexpected,
  withDeadline,
} from "./connection.js";
import { type DaemonIdent, HearthError, ProtocolError, refusal, requestError } from "./errors.js";

/** The built-in settings document. */
export const SETTINGS_DOC = "settings";

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** One step of a path: a map key or a list (or text) index. */
export type Step = string | number;

/** A path from the document's root. */
export type Path = readonly Step[];

/** A document's revision: its heads, sorted hex change hashes (`[]`: the empty document). */
export type Revision = string[];

/** How a `put` stores a value other than as plain JSON. */
export type PutAs = "text" | "counter" | "timestamp";

/** A path operation: what `write` applies, and what `changed` events carry. */
export type PatchOp =
  | { op: "put"; path: Step[]; value: Json; as?: PutAs }
  | { op: "delete"; path: Step[]; count?: number }
  | { op: "insert"; path: Step[]; values: Json[] }
  | { op: "splice"; path: Step[]; index: number; delete?: number; insert?: string }
  | { op: "increment"; path: Step[]; by: number };

/** Someone in a room. */
export interface PeerInfo {
  id: number;
  client?: string;
  pid?: number;
  mode: "view" | "replica";
  since: string;
  /** True for this connection. */
  you?: boolean;
}

/** One document of `list`. */
export interface DocSummary {
  doc: string;
  loaded: boolean;
  peers: number;
  stored_bytes: number;
}

/** One document's room (`inspect`): `revision` and `changes` only when it is loaded. */
export interface RoomReport {
  doc: string;
  loaded: boolean;
  revision?: Revision;
  peers: PeerInfo[];
  stored_bytes: number;
  appended_bytes: number;
  changes?: number;
  idle_ms?: number;
}

/** A write on disk: the revision right after it; `stale` when its `base` was not the latest (it was merged). */
export interface Written {
  revision: Revision;
  stale: boolean;
}

/** The document changed: `patches` take the watched value from `from` to `revision`. */
export interface ChangedEvent {
  type: "changed";
  from: Revision;
  revision: Revision;
  patches: PatchOp[];
}

/** The watcher fell behind the room's patch log: `value` replaces its value. */
export interface SnapshotEvent {
  type: "snapshot";
  revision: Revision;
  value: Json;
}

/** Peers came or went: everyone in the room now. */
export interface PresenceEvent {
  type: "presence";
  peers: PeerInfo[];
}

/** What a watch yields. */
export type SyncEvent = ChangedEvent | SnapshotEvent | PresenceEvent;

/** Options of a write. */
export interface WriteOptions extends CallOptions {
  /** The revision the paths were read at; a stale one is merged (see {@link Written.stale}). */
  base?: Revision;
}

/** Options of `watch`. */
export interface WatchOptions extends CallOptions {
  /** A revision kept from an earlier watch of the same path, with its value in `keep`: only the patches from it are sent when the room's log reaches back to it. */
  since?: Revision;
  /** The value kept at `since`. */
  keep?: Json;
}

// --- sans-IO -----------------------------------------------------------------

/** Sets a map key (created if missing) or an existing list element; `as` makes a string a text, an integer a counter or a timestamp. */
export function putOp(path: Path, value: Json, as?: PutAs): PatchOp {
  return as === undefined ? { op: "put", path: [...path], value } : { op: "put", path: [...path], value, as };
}

/** Removes a map key, or `count` list elements or text characters from the index. */
export function deleteOp(path: Path, count?: number): PatchOp {
  return count === undefined ? { op: "delete", path: [...path] } : { op: "delete", path: [...path], count };
}

/** Inserts `values` into a list before the path's last index (the length appends). */
export function insertOp(path: Path, values: Json[]): PatchOp {
  return { op: "insert", path: [...path], values };
}

/** Edits the text at `path`: removes `deleteCount` characters at `index`, inserts `insert`. */
export function spliceOp(path: Path, index: number, deleteCount = 0, insert = ""): PatchOp {
  return { op: "splice", path: [...path], index, delete: deleteCount, insert };
}

/** Adds `by` to the counter at `path`. */
export function incrementOp(path: Path, by = 1): PatchOp {
  return { op: "increment", path: [...path], by };
}

/** A patch that does not apply to the value it was sent for (the copy drifted from the daemon's). */
export class PatchError extends HearthError {
  constructor(patch: PatchOp, why: string) {
    super("patch_error", `cannot apply ${patch.op} at ${JSON.stringify(patch.path)}: ${why}`);
  }
}

function isIndex(step: unknown): step is number {
  return typeof step === "number" && Number.isInteger(step) && step >= 0;
}

function has(container: Json, step: Step): boolean {
  if (Array.isArray(container)) return isIndex(step) && step < container.length;
  if (container !== null && typeof container === "object") return typeof step === "string" && Object.hasOwn(container, step);
  return false;
}

function child(container: Json, step: Step): Json {
  return (container as Record<string | number, Json>)[step] as Json;
}

function setChild(container: Json, step: Step, value: Json): void {
  (container as Record<string | number, Json>)[step] = value;
}

function walk(root: Json, path: readonly Step[], patch: PatchOp): Json {
  let at = root;
  for (const step of path) {
    if (!has(at, step)) throw new PatchError(patch, `${JSON.stringify(step)} does not exist`);
    at = child(at, step);
  }
  return at;
}

/** A string's Unicode code points: text indices count them, as the daemon does. */
function codePoints(text: string): string[] {
  return Array.from(text);
}

/**
 * Applies one patch of a `changed` event to `value`, the JSON at the
 * watched path `base`, as the daemon applied it to the document; returns
 * the new value (changed in place when it is a container, replaced when
 * the patch puts the watched path itself). Text indices count Unicode code
 * points.
 */
export function applyPatch(value: Json, patch: PatchOp, base: Path = []): Json {
  const path = patch.path;
  if (base.some((step, i) => path[i] !== step) || path.length < base.length) {
    throw new PatchError(patch, `outside the watched path ${JSON.stringify(base)}`);
  }
  const rel = path.slice(base.length);
  if (patch.op === "splice") {
    const text = walk(value, rel, patch);
    if (typeof text !== "string") throw new PatchError(patch, "not a text");
    const chars = codePoints(text);
    const del = patch.delete ?? 0;
    if (patch.index + del > chars.length) {
      throw new PatchError(patch, `range ${patch.index}..${patch.index + del} beyond the text's ${chars.length} characters`);
    }
    chars.splice(patch.index, del, ...codePoints(patch.insert ?? ""));
    const edited = chars.join("");
    if (rel.length === 0) return edited;
    setChild(walk(value, rel.slice(0, -1), patch), rel[rel.length - 1] as Step, edited);
    return value;
  }
  if (rel.length === 0) {
    if (patch.op === "put") return patch.value;
    throw new PatchError(patch, "the path is empty");
  }
  const parent = walk(value, rel.slice(0, -1), patch);
  const last = rel[rel.length - 1] as Step;
  switch (patch.op) {
    case "put": {
      const isKey = parent !== null && typeof parent === "object" && !Array.isArray(parent) && typeof last === "string";
      if (!isKey && !has(parent, last)) throw new PatchError(patch, "no such slot");
      setChild(parent, last, patch.value);
      return value;
    }
    case "delete": {
      const count = patch.count ?? 1;
      if (Array.isArray(parent) && isIndex(last) && last + count <= parent.length) {
        parent.splice(last, count);
      } else if (typeof parent === "string" && isIndex(last)) {
        const chars = codePoints(parent);
        if (last + count > chars.length) throw new PatchError(patch, "beyond the end of the text");
        chars.splice(last, count);
        if (rel.length === 1) return chars.join("");
        setChild(walk(value, rel.slice(0, -2), patch), rel[rel.length - 2] as Step, chars.join(""));
      } else if (!Array.isArray(parent) && has(parent, last)) {
        delete (parent as Record<string, Json>)[last as string];
      } else {
        throw new PatchError(patch, "nothing to delete there");
      }
      return value;
    }
    case "insert":
      if (!(Array.isArray(parent) && isIndex(last) && last <= parent.length)) {
        throw new PatchError(patch, "not a list position");
      }
      parent.splice(last, 0, ...patch.values);
      return value;
    case "increment": {
      const now = has(parent, last) ? child(parent, last) : undefined;
      if (typeof now !== "number") throw new PatchError(patch, "no such counter");
      setChild(parent, last, now + patch.by);
      return value;
    }
  }
}

function revisionOf(value: unknown): Revision {
  if (!Array.isArray(value) || !value.every((h) => typeof h === "string")) {
    throw new ProtocolError(`a revision that is not an array of strings: ${JSON.stringify(value)}`);
  }
  return value as Revision;
}

function eventOf(response: { type: string; [field: string]: unknown }): SyncEvent | undefined {
  switch (response.type) {
    case "changed":
      return {
        type: "changed",
        from: revisionOf(response.from),
        revision: revisionOf(response.revision),
        patches: response.patches as PatchOp[],
      };
    case "snapshot":
      return { type: "snapshot", revision: revisionOf(response.revision), value: response.value as Json };
    case "presence":
      return { type: "presence", peers: response.peers as PeerInfo[] };
    default:
      return undefined;
  }
}

// --- the connection -----------------------------------------------------------

interface Pending {
  expected: string;
  resolve(response: { type: string; [field: string]: unknown }): void;
  reject(error: unknown): void;
  /** Given up on (aborted): its answer is read and dropped when it comes. */
  abandoned: boolean;
}

/**
 * One document's room in view mode (or, from {@link SyncDoc.control}, a
 * connection joined to no room).
 */
export class SyncDoc {
  private readonly pending: Pending[] = [];
  private readonly events: SyncEvent[] = [];
  private eventWaiter: { resolve(event: SyncEvent): void; reject(error: unknown): void } | undefined;
  private reading = false;
  private failure: unknown;

  private constructor(
    private readonly conn: Connection,
    private readonly exchange: Exchange,
    /** The document (`undefined` on a control connection). */
    readonly doc: string | undefined,
    /** This connection's peer id in its room. */
    readonly peer: number,
  ) {}

  /**
   * Joins `doc`'s room (created empty when it does not exist); `null`: a
   * control connection, for `list`, `inspect` and `closeRoom`. A bad name
   * rejects with `InvalidDocName`; a full room or store with `RoomFull`,
   * `TooManyDocs` (both {@link Refused}).
   */
  static async open(doc: string | null, options: ConnectOptions = {}): Promise<SyncDoc> {
    const conn = await Connection.open("sync", options, { doc, mode: "view" });
    // One exchange for the connection's life: the daemon's frames (answers
    // and events alike) are all asked for.
    const exchange = await conn.begin("the sync room", undefined);
    exchange.inFlight = true;
    try {
      const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
      const first = parseResponse(await withDeadline("joined", timeoutMs, options.signal, () => exchange.readFrame()));
      if (first.type === "error") {
        const daemon: DaemonIdent = conn.daemon;
        throw refusal({ code: String(first.code), message: String(first.message ?? "") }, daemon);
      }
      if (first.type !== "joined" || typeof first.peer !== "number") throw unexpected("joined", first);
      return new SyncDoc(conn, exchange, doc ?? undefined, first.peer);
    } catch (error) {
      conn.close();
      throw error;
    }
  }

  /** A connection joined to no room: `list`, `inspect`, `closeRoom`. */
  static control(options: ConnectOptions = {}): Promise<SyncDoc> {
    return SyncDoc.open(null, options);
  }

  /** The daemon that accepted the handshake. */
  get daemon(): DaemonIdent {
    return this.conn.daemon;
  }

  /** Whether the connection has ended. */
  get closed(): boolean {
    return this.conn.closed;
  }

  /** Leaves the room. */
  close(): void {
    this.conn.close();
  }

  private wanted(): boolean {
    return this.pending.length > 0 || this.eventWaiter !== undefined;
  }

  /** Reads frames while someone waits for one; hands each to its request or the watch. */
  private pump(): void {
    if (this.reading || !this.wanted()) return;
    this.reading = true;
    void (async () => {
      try {
        while (this.wanted()) this.dispatch(await this.exchange.readFrame());
      } catch (error) {
        this.fail(error);
      } finally {
        this.reading = false;
      }
    })();
  }

  private dispatch(frame: Buffer): void {
    const response = parseResponse(frame);
    const event = eventOf(response);
    if (event) {
      const waiter = this.eventWaiter;
      this.eventWaiter = undefined;
      if (waiter) waiter.resolve(event);
      else this.events.push(event);
      return;
    }
    const next = this.pending.shift();
    if (response.type === "error") {
      const error = requestError({ code: String(response.code), message: String(response.message ?? "") });
      if (!error.connectionUsable || next === undefined) {
        // Said just before the daemon closes the connection (room_closed, peer_too_slow).
        if (next && !next.abandoned) next.reject(error);
        this.fail(error);
        this.conn.close();
        return;
      }
      if (!next.abandoned) next.reject(error);
      return;
    }
    if (next === undefined) {
      this.fail(new ProtocolError(`an answer nothing asked for: ${frame.toString("utf8").slice(0, 200)}`));
      this.conn.close();
      return;
    }
    if (next.abandoned) return;
    if (response.type !== next.expected) next.reject(unexpected(next.expected, response));
    else next.resolve(response);
  }

  private fail(error: unknown): void {
    if (this.failure === undefined) this.failure = error;
    for (const p of this.pending.splice(0)) if (!p.abandoned) p.reject(this.failure);
    const waiter = this.eventWaiter;
    this.eventWaiter = undefined;
    waiter?.reject(this.failure);
  }

  /** Sends `request` and resolves with its answer, which must be of type `expected`. */
  request<T>(request: object, expected: string, options: CallOptions = {}): Promise<T & { type: string }> {
    const { signal } = options;
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (signal?.aborted) return Promise.reject(abortError(expected, signal));
    return new Promise((resolve, reject) => {
      const entry: Pending = {
        expected,
        abandoned: false,
        resolve: (response) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(response as T & { type: string });
        },
        reject: (error) => {
          signal?.removeEventListener("abort", onAbort);
          reject(error);
        },
      };
      // The request went out: its answer will still come, and is dropped.
      const onAbort = (): void => {
        entry.abandoned = true;
        reject(abortError(expected, signal as AbortSignal));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        const sent = this.exchange.send(request);
        this.pending.push(entry);
        sent?.catch((error: unknown) => this.fail(error));
      } catch (error) {
        entry.reject(error);
        return;
      }
      this.pump();
    });
  }

  /** The value at `path` (the whole document by default) and the revision it was read at. */
  async get(path: Path = [], options: CallOptions = {}): Promise<{ revision: Revision; value: Json }> {
    const request = path.length > 0 ? { type: "get", path } : { type: "get" };
    const answer = await this.request<{ revision: unknown; value: Json }>(request, "value", options);
    return { revision: revisionOf(answer.revision), value: answer.value };
  }

  /** The value at `path` (see {@link get}). */
  async value(path: Path = [], options: CallOptions = {}): Promise<Json> {
    return (await this.get(path, options)).value;
  }

  /** Applies `ops` as one change, all or none; resolves once it is on disk. */
  async write(ops: PatchOp[], options: WriteOptions = {}): Promise<Written> {
    const request = options.base === undefined ? { type: "write", ops } : { type: "write", ops, base: options.base };
    const answer = await this.request<{ revision: unknown; stale?: boolean }>(request, "written", options);
    return { revision: revisionOf(answer.revision), stale: answer.stale === true };
  }

  /** Sets a map key or an existing list element (see {@link putOp}). */
  put(path: Path, value: Json, options: WriteOptions & { as?: PutAs } = {}): Promise<Written> {
    return this.write([putOp(path, value, options.as)], options);
  }

  /** Removes a map key, or `count` list elements or characters. */
  delete(path: Path, count?: number, options: WriteOptions = {}): Promise<Written> {
    return this.write([deleteOp(path, count)], options);
  }

  /** Inserts `values` into a list before the path's last index. */
  insert(path: Path, values: Json[], options: WriteOptions = {}): Promise<Written> {
    return this.write([insertOp(path, values)], options);
  }

  /** Edits the text at `path`. */
  splice(path: Path, index: number, deleteCount: number, insert: string, options: WriteOptions = {}): Promise<Written> {
    return this.write([spliceOp(path, index, deleteCount, insert)], options);
  }

  /** Adds `by` to the counter at `path`. */
  increment(path: Path, by = 1, options: WriteOptions = {}): Promise<Written> {
    return this.write([incrementOp(path, by)], options);
  }

  /** Who is in this room (this connection marked `you`). */
  async peers(options: CallOptions = {}): Promise<PeerInfo[]> {
    return (await this.request<{ peers: PeerInfo[] }>({ type: "peers" }, "peers", options)).peers;
  }

  /** Every document (all pages), by name. */
  async list(prefix?: string, options: CallOptions = {}): Promise<DocSummary[]> {
    const docs: DocSummary[] = [];
    let after: string | undefined;
    for (;;) {
      const request = { type: "list", ...(prefix === undefined ? {} : { prefix }), ...(after === undefined ? {} : { after }) };
      const page = await this.request<{ docs: DocSummary[]; next?: string }>(request, "docs", options);
      docs.push(...page.docs);
      if (page.next === undefined) return docs;
      after = page.next;
    }
  }

  /** A document's room (this connection's by default); an unloaded one is not loaded for it. */
  async inspect(doc?: string, options: CallOptions = {}): Promise<RoomReport> {
    const request = doc === undefined ? { type: "inspect" } : { type: "inspect", doc };
    const { type: _type, ...report } = await this.request<RoomReport>(request, "room", options);
    return report;
  }

  /** Evicts a room (this connection's by default); resolves with how many peers were disconnected. */
  async closeRoom(doc?: string, options: CallOptions = {}): Promise<number> {
    const request = doc === undefined ? { type: "close" } : { type: "close", doc };
    return (await this.request<{ peers: number }>(request, "closed", options)).peers;
  }

  /**
   * Follows the value at `path`: the returned {@link Watch} holds it and
   * its revision, and each event it yields has been applied to them. A
   * second watch replaces the first.
   */
  async watch(path: Path = [], options: WatchOptions = {}): Promise<Watch> {
    const request: Record<string, unknown> = { type: "watch" };
    if (path.length > 0) request.path = path;
    if (options.since !== undefined) request.since = options.since;
    const answer = await this.request<{ revision: unknown; value?: Json; patches?: PatchOp[] }>(
      request,
      "watching",
      options,
    );
    let value: Json;
    if (answer.value !== undefined) {
      value = answer.value;
    } else {
      value = structuredClone(options.keep ?? null);
      for (const patch of answer.patches ?? []) value = applyPatch(value, patch, path);
    }
    return new Watch(this, [...path], revisionOf(answer.revision), value);
  }

  /** The next event of the watch, waiting for it. */
  nextEvent(options: CallOptions = {}): Promise<SyncEvent> {
    const buffered = this.events.shift();
    if (buffered) return Promise.resolve(buffered);
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(abortError("an event", signal));
    if (this.eventWaiter) return Promise.reject(new HearthError("busy", "another call already waits for the next event"));
    return new Promise((resolve, reject) => {
      // Aborting only stops waiting: an event that comes later stays buffered.
      const onAbort = (): void => {
        this.eventWaiter = undefined;
        reject(abortError("an event", signal as AbortSignal));
      };
      this.eventWaiter = {
        resolve: (event) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(event);
        },
        reject: (error) => {
          signal?.removeEventListener("abort", onAbort);
          reject(error);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.pump();
    });
  }
}

/**
 * A watched path: {@link value} and {@link revision}, kept current as
 * events are read; `for await (const event of watch)` reads them.
 */
export class Watch implements AsyncIterable<SyncEvent> {
  /** Who is in the room, as of the last `presence` event. */
  peers: PeerInfo[] | undefined;

  /** @internal */
  constructor(
    readonly doc: SyncDoc,
    /** The watched path. */
    readonly path: Step[],
    /** The revision {@link value} is at. */
    public revision: Revision,
    /** The JSON at the watched path, as of {@link revision}. */
    public value: Json,
  ) {}

  /** Reads the next event and applies it. */
  async next(options: CallOptions = {}): Promise<SyncEvent> {
    const event = await this.doc.nextEvent(options);
    if (event.type === "changed") {
      let value = this.value;
      for (const patch of event.patches) value = applyPatch(value, patch, this.path);
      this.value = value;
      this.revision = event.revision;
    } else if (event.type === "snapshot") {
      this.value = event.value;
      this.revision = event.revision;
    } else {
      this.peers = event.peers;
    }
    return event;
  }

  /** Reads events until `condition(value)` holds; resolves with the value. */
  async until(condition: (value: Json) => boolean, options: CallOptions = {}): Promise<Json> {
    while (!condition(this.value)) await this.next(options);
    return this.value;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<SyncEvent> {
    for (;;) yield await this.next();
  }
}
