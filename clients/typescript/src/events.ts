/**
 * Events (proto-docs/status.md, "subscribe"): what the daemon's services
 * do, as it happens, streamed on a `status` connection.
 *
 * ```ts
 * const status = await StatusClient.connect();
 * for await (const notice of status.events({ kinds: ["job_state"] })) {
 *   if (notice.type === "lagged") console.log(`missed ${notice.missed} events`);
 *   else if (notice.kind === "job_state") console.log(notice.id, notice.from, "->", notice.to);
 * }
 * ```
 *
 * Each event is a {@link HearthEvent}: a union discriminated by `kind`,
 * with the wire's fields. An event of a kind this version does not know
 * (from a newer daemon) arrives as an {@link UnknownEvent} and fields it
 * does not know are ignored, so a newer daemon never breaks a loop. A
 * subscriber that fell behind the daemon's buffer gets one {@link Lagged}
 * saying how many events it missed.
 *
 * A subscription holds its connection until it ends: the client's other
 * calls wait their turn meanwhile, so use another `StatusClient` for them.
 * Leaving the loop (`break`, `return`, an exception in its body) or
 * {@link EventStream.unsubscribe} ends it with `unsubscribe`, and the
 * connection serves calls again. Aborting its `signal` closes the
 * connection instead, as with every call.
 *
 * @module
 */

import { type AnyResponse, type CallOptions, type Exchange, unexpected } from "./connection.js";
import { ProtocolError } from "./errors.js";
import type { BlobHash } from "./blob.js";
import type { JobState } from "./queue.js";
import type { HealthState } from "./status.js";

/** The kinds of events this version knows. */
export type EventKind =
  | "job_state"
  | "pool_build_started"
  | "pool_build_ended"
  | "pool_take"
  | "pool_release"
  | "blob_put"
  | "blob_delete"
  | "blob_gc"
  | "health_changed"
  | "sync_room_opened"
  | "sync_room_closed"
  | "sync_peer_joined"
  | "sync_peer_left"
  | "sync_compacted"
  | "sync_settings_edit";

/** Every kind this version knows, for filters and displays. */
export const EVENT_KINDS: readonly EventKind[] = [
  "job_state",
  "pool_build_started",
  "pool_build_ended",
  "pool_take",
  "pool_release",
  "blob_put",
  "blob_delete",
  "blob_gc",
  "health_changed",
  "sync_room_opened",
  "sync_room_closed",
  "sync_peer_joined",
  "sync_peer_left",
  "sync_compacted",
  "sync_settings_edit",
];

/** What every event has. */
export interface EventHead {
  type: "event";
  /**
   * One more than the event the daemon published before it: a gap in a
   * filtered stream only means the events between did not pass the filter.
   */
  seq: number;
  /** When it happened, in milliseconds since the Unix epoch. */
  at_ms: number;
  /** The service it comes from (a channel name: `queue`, `pool`, `blob`, `status`). */
  service: string;
}

/** A job changed state (`from: null`: just submitted; `to: null`: purged). */
export interface JobStateEvent extends EventHead {
  kind: "job_state";
  id: number;
  queue: string;
  from: JobState | null;
  to: JobState | null;
}

/** A pool began building (or resetting) a resource. */
export interface PoolBuildStartedEvent extends EventHead {
  kind: "pool_build_started";
  pool: string;
  resource: string;
}

/** A build (or reset) ended: `ok` when the resource is ready, after `ms`. */
export interface PoolBuildEndedEvent extends EventHead {
  kind: "pool_build_ended";
  pool: string;
  resource: string;
  ok: boolean;
  ms: number;
}

/** A resource was taken; `warm` when it was ready at once. */
export interface PoolTakeEvent extends EventHead {
  kind: "pool_take";
  pool: string;
  lease: string;
  warm: boolean;
}

/** A lease was released. */
export interface PoolReleaseEvent extends EventHead {
  kind: "pool_release";
  pool: string;
  lease: string;
}

/** A blob was stored (`existed`: a put found it stored already). */
export interface BlobPutEvent extends EventHead {
  kind: "blob_put";
  hash: BlobHash;
  size: number;
  existed: boolean;
}

/** A blob was deleted. */
export interface BlobDeleteEvent extends EventHead {
  kind: "blob_delete";
  hash: BlobHash;
  size: number;
}

/** A collection removed `removed` blobs holding `bytes` bytes. */
export interface BlobGcEvent extends EventHead {
  kind: "blob_gc";
  removed: number;
  bytes: number;
}

/** The daemon's health changed state; `codes` are its reasons now. */
export interface HealthChangedEvent extends EventHead {
  kind: "health_changed";
  from: HealthState;
  to: HealthState;
  codes: string[];
}

/** A sync document was loaded into a room; `created` when it did not exist before. */
export interface SyncRoomOpenedEvent extends EventHead {
  kind: "sync_room_opened";
  doc: string;
  created: boolean;
}

/** A sync room unloaded with `peers` still in it. */
export interface SyncRoomClosedEvent extends EventHead {
  kind: "sync_room_closed";
  doc: string;
  why: "idle" | "evicted" | "store_failed" | "shutdown";
  peers: number;
}

/** A peer joined a sync room. */
export interface SyncPeerJoinedEvent extends EventHead {
  kind: "sync_peer_joined";
  doc: string;
  peer: number;
  client?: string;
  pid?: number;
  mode: "view" | "replica";
}

/** A peer left a sync room. */
export interface SyncPeerLeftEvent extends EventHead {
  kind: "sync_peer_left";
  doc: string;
  peer: number;
}

/** A sync document's file was compacted to `bytes` bytes. */
export interface SyncCompactedEvent extends EventHead {
  kind: "sync_compacted";
  doc: string;
  bytes: number;
}

/** A person's edit of settings.json was merged (`applied`) or refused (`reason`). */
export interface SyncSettingsEditEvent extends EventHead {
  kind: "sync_settings_edit";
  applied: boolean;
  reason?: string;
}

/** An event of a kind this version does not know (a newer daemon's). */
export interface UnknownEvent extends EventHead {
  kind: "unknown";
  /** The kind the daemon sent. */
  wireKind: string;
  /** The whole frame, as sent. */
  fields: Record<string, unknown>;
}

/** One thing that happened. */
export type HearthEvent =
  | JobStateEvent
  | PoolBuildStartedEvent
  | PoolBuildEndedEvent
  | PoolTakeEvent
  | PoolReleaseEvent
  | BlobPutEvent
  | BlobDeleteEvent
  | BlobGcEvent
  | HealthChangedEvent
  | SyncRoomOpenedEvent
  | SyncRoomClosedEvent
  | SyncPeerJoinedEvent
  | SyncPeerLeftEvent
  | SyncCompactedEvent
  | SyncSettingsEditEvent
  | UnknownEvent;

/**
 * The subscriber fell behind the daemon's buffer: `missed` events were
 * dropped for it (the next event's `seq` shows the gap). A subscription
 * that resumes (`since`) is told the same way of events the daemon no
 * longer keeps.
 */
export interface Lagged {
  type: "lagged";
  missed: number;
}

/** What a subscription delivers: an event, or word of events missed. */
export type Notice = HearthEvent | Lagged;

/** Which events, and from where (each filter given must match). */
export interface EventsOptions extends CallOptions {
  /** Only events of these services (channel names). */
  services?: readonly string[];
  /** Only events of these kinds; an unknown kind is refused (`invalid_request`). */
  kinds?: readonly EventKind[];
  /** Only events about these subjects: job ids, pool names, blob hashes. */
  ids?: readonly (string | number)[];
  /**
   * Resume after this sequence number (a stream's {@link EventStream.seq}
   * before a reconnect): the events after it the daemon still keeps come
   * first, older ones as one {@link Lagged}.
   */
  since?: number;
}

const KNOWN: ReadonlySet<string> = new Set(EVENT_KINDS);

/** The `subscribe` request for `options`. */
export function subscribeRequest(options: EventsOptions): Record<string, unknown> {
  const request: Record<string, unknown> = { type: "subscribe" };
  if (options.services?.length) request.services = [...options.services];
  if (options.kinds?.length) request.kinds = [...options.kinds];
  if (options.ids?.length) request.ids = options.ids.map(String);
  if (options.since !== undefined) request.since = options.since;
  return request;
}

function isInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value);
}

/** An `event` frame as a {@link HearthEvent}; a kind this version does not know becomes an {@link UnknownEvent}. */
export function toEvent(frame: AnyResponse): HearthEvent {
  const { seq, at_ms, service, kind } = frame;
  if (!isInteger(seq) || !isInteger(at_ms) || typeof service !== "string" || typeof kind !== "string") {
    throw new ProtocolError(`an event without its seq, at_ms, service or kind: ${JSON.stringify(frame).slice(0, 200)}`);
  }
  if (!KNOWN.has(kind)) return { type: "event", seq, at_ms, service, kind: "unknown", wireKind: kind, fields: frame };
  // Known kinds carry the fields proto-docs lists for them.
  return frame as unknown as HearthEvent;
}

/**
 * A subscription: an async iterable of {@link Notice}s, made by
 * `StatusClient.subscribe()` once the daemon has confirmed it (nothing
 * published after that is missed). Iterate it once; leaving the loop
 * unsubscribes.
 */
export class EventStream implements AsyncIterable<Notice> {
  private last: number;
  private done = false;
  private reading = false;
  private ending: Promise<void> | undefined;
  private readonly finished: Promise<void>;
  private markFinished!: () => void;
  private readonly notices: AsyncGenerator<Notice, void, undefined>;

  /** @internal Made by `StatusClient.subscribe()`. */
  constructor(
    private readonly exchange: Exchange,
    seq: number,
  ) {
    this.last = seq;
    this.finished = new Promise<void>((resolve) => (this.markFinished = resolve));
    this.notices = this.read();
  }

  /**
   * The last event's sequence number (at first, the last one published
   * before the subscription): where a new subscription resumes (`since`).
   */
  get seq(): number {
    return this.last;
  }

  /** Whether the subscription has ended (unsubscribed, failed or aborted). */
  get ended(): boolean {
    return this.done;
  }

  [Symbol.asyncIterator](): AsyncGenerator<Notice, void, undefined> {
    return this.notices;
  }

  /**
   * Ends the subscription (events on their way are skipped); the
   * connection serves calls again, and a loop iterating the stream
   * meanwhile ends. Rejects if `unsubscribe` could not be sent or its
   * answer read: the connection is then closed.
   */
  unsubscribe(): Promise<void> {
    if (this.done) return Promise.resolve();
    this.ending ??= this.end();
    return this.ending;
  }

  private async end(): Promise<void> {
    try {
      const sent = this.exchange.send({ type: "unsubscribe" });
      if (sent) await sent;
      // A loop waiting on the stream reads up to `unsubscribed` and ends.
      if (this.reading) return await this.finished;
      this.reading = true;
      try {
        while (!this.done) this.take(await this.exchange.readAnswer());
      } finally {
        this.reading = false;
      }
    } catch (error) {
      this.fail();
      throw error;
    }
  }

  private async *read(): AsyncGenerator<Notice, void, undefined> {
    let failed = false;
    try {
      while (!this.done) {
        if (this.reading) {
          // unsubscribe() is reading up to the end itself.
          await this.finished;
          break;
        }
        // Frames already here are read without waiting: a backlog goes at the speed of parsing.
        const here = this.exchange.pollFrame();
        let frame: AnyResponse;
        if (here !== undefined) {
          frame = this.exchange.streamAnswer(here);
        } else {
          this.reading = true;
          try {
            frame = await this.exchange.readAnswer();
          } finally {
            this.reading = false;
          }
        }
        const notice = this.take(frame);
        if (notice !== undefined) yield notice;
      }
    } catch (error) {
      failed = true;
      this.fail();
      throw error;
    } finally {
      // Left early (`break`, `return`, a throw in the loop's body): unsubscribe.
      // A failure here closes the connection, and later calls say why.
      if (!failed && !this.done) await this.unsubscribe().catch(() => undefined);
    }
  }

  /** Reads one frame of the subscription: a notice to hand out, or none. */
  private take(frame: AnyResponse): Notice | undefined {
    switch (frame.type) {
      case "event": {
        if (this.ending) return undefined;
        const event = toEvent(frame);
        this.last = event.seq;
        return event;
      }
      case "lagged":
        if (this.ending) return undefined;
        if (!isInteger(frame.missed)) throw unexpected("lagged with a count", frame);
        return { type: "lagged", missed: frame.missed };
      case "unsubscribed":
        if (!this.ending) throw unexpected("event or lagged", frame);
        this.exchange.complete();
        this.finish();
        return undefined;
      default:
        throw unexpected(this.ending ? "unsubscribed" : "event or lagged", frame);
    }
  }

  private finish(): void {
    this.done = true;
    this.exchange.end();
    this.markFinished();
  }

  /** Ends on a failure: the exchange, still in flight, closes the connection. */
  private fail(): void {
    if (this.done) return;
    this.done = true;
    this.exchange.end("the event stream failed");
    this.markFinished();
  }
}
