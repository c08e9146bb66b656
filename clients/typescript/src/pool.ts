/**
 * The `pool` channel (proto-docs/pool.md): prewarmed resources handed out
 * at once, under a lease that only an explicit release ends.
 *
 * ```ts
 * const pools = await PoolClient.connect();
 * await pools.withLease("venv", async (lease) => {
 *   console.log(lease.path, lease.warm ? "warm" : "built on demand");
 * }); // released here, also when the callback throws
 * ```
 *
 * @module
 */

import { ChannelClient, stripType } from "./channel.js";
import { type CallOptions, type ConnectOptions, Connection } from "./connection.js";

/** How a pool's resources are built. */
export type PoolKind = "command" | "venv";

/** Where the definition in force comes from. */
export type DefinitionSource = "builtin" | "config" | "runtime";

/** A pool's definition, with its wire names (see proto-docs/pool.md). */
export interface PoolDefinition {
  name: string;
  kind?: PoolKind;
  create?: string[];
  check?: string[];
  reset?: string[];
  packages?: string[];
  python?: string;
  size?: number;
  max_age_ms?: number;
  create_timeout_ms?: number;
  check_interval_ms?: number;
  env?: Record<string, string>;
}

/** A taken resource. */
export interface Lease {
  /** The lease id (32 lowercase hex digits): the only handle on the resource. */
  lease: string;
  pool: string;
  resource: string;
  /** The resource's directory; it belongs to the holder until released. */
  path: string;
  /** True when it was ready at once; false when built on demand. */
  warm: boolean;
  created_at: string;
  taken_at: string;
  age_ms: number;
  build_ms: number;
  wait_ms: number;
  holder?: string;
  holder_pid?: number;
}

/** What `release` did with the resource. */
export interface Released {
  lease: string;
  outcome: "removed" | "resetting";
  /** Why a resource asked to be reused is removed instead. */
  reason?: string;
}

/** A failed build, reset or check. */
export interface BuildFailure {
  at: string;
  message: string;
  log?: string;
}

/** One pool's state and counters. */
export interface PoolStatus {
  name: string;
  source?: DefinitionSource;
  definition?: PoolDefinition;
  commands?: { create: string[][]; check?: string[]; reset?: string[] };
  target: number;
  ready: number;
  building: number;
  checking: number;
  resetting: number;
  taken: number;
  waiting: number;
  takes: number;
  warm_takes: number;
  warm_hit_rate?: number;
  builds: number;
  mean_build_ms?: number;
  failures: number;
  failures_total: number;
  last_error?: BuildFailure;
  backoff_ms?: number;
  retry_at?: string;
  expired: number;
  check_failed: number;
}

/** The answer to `status`. */
export interface PoolsReport {
  pools: PoolStatus[];
  builds_running: number;
  max_concurrent_builds: number;
}

/** The pool service in the status channel's `services`. */
export interface PoolSummary {
  pools: Record<string, Record<string, unknown>>;
  builds_running: number;
}

/** Options of {@link PoolClient.take}. */
export interface TakeOptions extends CallOptions {
  /**
   * How long to wait for an on-demand build (the daemon's default: 10
   * minutes); 0 takes only a ready resource. Fails with `take_timeout`.
   */
  timeoutMs?: number;
}

/** Options of {@link PoolClient.release}. */
export interface ReleaseOptions extends CallOptions {
  /** Reset the resource and put it back in its pool when the pool can and needs one. */
  reuse?: boolean;
}

/** A client of the `pool` channel. */
export class PoolClient extends ChannelClient {
  /** Connects and handshakes onto the `pool` channel. */
  static async connect(options: ConnectOptions = {}): Promise<PoolClient> {
    return new PoolClient(await Connection.open("pool", options));
  }

  /** Every pool's state and counters, or only `pool`'s. */
  async status(pool?: string, options?: CallOptions): Promise<PoolsReport> {
    const request = pool === undefined ? { type: "status" } : { type: "status", pool };
    const { pools, builds_running, max_concurrent_builds } = await this.call<PoolsReport>(
      "pool status",
      request,
      "status",
      options,
    );
    return { pools, builds_running, max_concurrent_builds };
  }

  /**
   * Takes a resource: a ready one at once (`warm`), else one built on
   * demand. The resource is the caller's until {@link release}; see
   * {@link withLease} for scoped use. Aborting a take that waits for a
   * build closes the connection, and the daemon puts the resource back.
   */
  async take(pool: string, options: TakeOptions = {}): Promise<Lease> {
    const request: Record<string, unknown> = { type: "take", pool };
    if (options.timeoutMs !== undefined) request.timeout_ms = Math.max(0, Math.round(options.timeoutMs));
    return stripType(await this.call<Lease & { type?: string }>(`take from pool ${pool}`, request, "taken", options));
  }

  /** Gives a resource back (by its lease or the lease id); the lease is void from the answer on. */
  async release(lease: Lease | string, options: ReleaseOptions = {}): Promise<Released> {
    const id = typeof lease === "string" ? lease : lease.lease;
    const request: Record<string, unknown> = { type: "release", lease: id };
    if (options.reuse) request.reuse = true;
    return stripType(await this.call<Released & { type?: string }>("release", request, "released", options));
  }

  /**
   * Takes a resource, runs `use` with it, and releases it when `use`
   * settles, whether it returns or throws. If both `use` and the release
   * fail, `use`'s error is thrown.
   */
  async withLease<T>(
    pool: string,
    use: (lease: Lease) => Promise<T> | T,
    options: TakeOptions & { reuse?: boolean } = {},
  ): Promise<T> {
    const lease = await this.take(pool, options);
    let result: T;
    try {
      result = await use(lease);
    } catch (error) {
      await this.release(lease, { reuse: options.reuse ?? false }).catch(() => undefined);
      throw error;
    }
    await this.release(lease, { reuse: options.reuse ?? false });
    return result;
  }

  /** Resources handed out and not released, oldest first (all pools, or `pool`'s). */
  async leases(pool?: string, options?: CallOptions): Promise<Lease[]> {
    const request = pool === undefined ? { type: "leases" } : { type: "leases", pool };
    return (await this.call<{ leases: Lease[] }>("leases", request, "leases", options)).leases;
  }

  /** Sets how many ready resources `pool` keeps (0 to 64, persisted). */
  async warm(pool: string, size: number, options?: CallOptions): Promise<{ pool: string; target: number; previous: number }> {
    return stripType(
      await this.call<{ type?: string; pool: string; target: number; previous: number }>(
        `warm pool ${pool}`,
        { type: "warm", pool, size },
        "target_set",
        options,
      ),
    );
  }

  /** Sets `pool`'s target to 0 and removes its ready resources; returns how many. */
  async drain(pool: string, options?: CallOptions): Promise<number> {
    return (await this.call<{ removed: number }>(`drain pool ${pool}`, { type: "drain", pool }, "drained", options))
      .removed;
  }

  /**
   * Defines or redefines a pool (persisted). The same definition again
   * changes nothing (`changed: false`), so an app can define its pools at
   * every launch.
   */
  async define(
    definition: PoolDefinition,
    options?: CallOptions,
  ): Promise<{ pool: string; source: DefinitionSource; changed: boolean }> {
    return stripType(
      await this.call<{ type?: string; pool: string; source: DefinitionSource; changed: boolean }>(
        `define pool ${definition.name}`,
        { type: "define", definition },
        "defined",
        options,
      ),
    );
  }

  /** Removes a run-time definition; `source` names the definition in force now, if any. */
  async undefine(pool: string, options?: CallOptions): Promise<{ pool: string; source?: DefinitionSource }> {
    return stripType(
      await this.call<{ type?: string; pool: string; source?: DefinitionSource }>(
        `undefine pool ${pool}`,
        { type: "undefine", pool },
        "undefined",
        options,
      ),
    );
  }
}
