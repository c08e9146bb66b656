/**
 * The `status` channel (proto-docs/status.md): liveness, health, identity,
 * a graceful stop, and the daemon's events (their types are in events.ts).
 *
 * ```ts
 * const status = await StatusClient.connect();
 * await status.ping();
 * const report = await status.status();
 * console.log(report.version, report.health.state);
 * status.close();
 * ```
 *
 * @module
 */

import { ChannelClient } from "./channel.js";
import { type CallOptions, type ConnectOptions, Connection, unexpected } from "./connection.js";
import { EventStream, type EventsOptions, type Notice, subscribeRequest } from "./events.js";
import type { PoolSummary } from "./pool.js";
import type { Usage } from "./blob.js";

/** `healthy`, `degraded` or `unhealthy`. */
export type HealthState = "healthy" | "degraded" | "unhealthy";

/** One thing that is not right. */
export interface HealthReason {
  code: string;
  severity: HealthState;
  message: string;
}

/** The daemon's health: the worst of its reasons. */
export interface Health {
  state: HealthState;
  reasons: HealthReason[];
}

/** Connection counters. */
export interface ConnectionStats {
  active: number;
  total: number;
  refused_busy: number;
  refused_peer: number;
}

/** The limits in force (proto-docs/framing.md). */
export interface Limits {
  max_frame: number;
  handshake_max_frame: number;
  handshake_timeout_ms: number;
  max_connections: number;
  connection_idle_timeout_ms: number;
  write_timeout_ms: number;
  shutdown_grace_ms: number;
  /** Bytes of large request frames held at once, all connections together (absent from older daemons). */
  max_inflight_bytes?: number;
}

/** The queue service's summary. */
export interface QueueSummary {
  pending: number;
  running: number;
  dead: number;
  succeeded: number;
  attempts_failed: number;
  store_errors: number;
  workers: number;
  oldest_queued_ms: number | null;
  store_moved_to?: string | null;
}

/** The `status` answer. */
export interface StatusReport {
  pid: number;
  version: string;
  protocol: number;
  uptime_ms: number;
  started_at: string;
  socket: string;
  state_dir: string;
  connections: ConnectionStats;
  channels: string[];
  health: Health;
  limits: Limits;
  services: { pool?: PoolSummary; queue?: QueueSummary; blob?: Usage; [service: string]: unknown };
}

/** The answer to `shutdown`: the stop has begun. */
export interface ShutdownStarted {
  /** How long requests in flight may still run. */
  grace_ms: number;
  /** With `drain`: the longest running work may take first. */
  drain_ms?: number;
}

/** Options of {@link StatusClient.shutdown}. */
export interface ShutdownOptions extends CallOptions {
  /** Logged by the daemon. */
  reason?: string;
  /** Let running jobs and builds finish first (the daemon keeps serving meanwhile). */
  drain?: boolean;
}

/** A client of the `status` channel. */
export class StatusClient extends ChannelClient {
  /** Connects and handshakes onto the `status` channel. */
  static async connect(options: ConnectOptions = {}): Promise<StatusClient> {
    return new StatusClient(await Connection.open("status", options));
  }

  /** The cheapest round trip. */
  async ping(options?: CallOptions): Promise<void> {
    await this.call("ping", { type: "ping" }, "pong", options);
  }

  /** The daemon's status report. */
  async status(options?: CallOptions): Promise<StatusReport> {
    return this.call<StatusReport & { type: string }>("status", { type: "status" }, "status", options);
  }

  /**
   * Asks the daemon to stop gracefully. The daemon is still running when
   * this returns: the answer means the stop has begun.
   */
  async shutdown(options: ShutdownOptions = {}): Promise<ShutdownStarted> {
    const request: Record<string, unknown> = { type: "shutdown" };
    if (options.reason !== undefined) request.reason = options.reason;
    if (options.drain) request.drain = true;
    const answer = await this.call<ShutdownStarted & { type: string }>("shutdown", request, "shutting_down", options);
    return answer.drain_ms === undefined
      ? { grace_ms: answer.grace_ms }
      : { grace_ms: answer.grace_ms, drain_ms: answer.drain_ms };
  }

  /**
   * Subscribes to the daemon's events; resolves once the daemon has
   * confirmed, so nothing published after that is missed. The stream
   * holds this client's connection until it ends (see {@link EventStream}).
   */
  async subscribe(options: EventsOptions = {}): Promise<EventStream> {
    const exchange = await this.begin("the event subscription", options);
    try {
      const sent = exchange.send(subscribeRequest(options));
      if (sent) await sent;
      const answer = await exchange.readAnswer();
      if (answer.type !== "subscribed" || typeof answer.seq !== "number") throw unexpected("subscribed", answer);
      return new EventStream(exchange, answer.seq);
    } catch (error) {
      exchange.end("the subscription failed");
      throw error;
    }
  }

  /**
   * The daemon's events, as they happen, and word of any missed
   * ({@link Notice}): {@link subscribe} and iterate. Leaving the loop
   * unsubscribes; the connection then serves calls again.
   */
  async *events(options: EventsOptions = {}): AsyncGenerator<Notice, void, undefined> {
    yield* await this.subscribe(options);
  }
}
