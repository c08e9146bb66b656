/**
 * The `queue` channel (proto-docs/queue.md): a durable job queue.
 *
 * ```ts
 * const queue = await QueueClient.connect();
 * const { job } = await queue.submit({ argv: ["make", "test"], key: "build-42" });
 * for await (const event of queue.wait(job.id)) console.log(event.state);
 * for await (const chunk of queue.logs(job.id)) if (chunk.type === "log_data") process.stdout.write(chunk.data);
 * ```
 *
 * `wait` and `logs` are async iterators. Leaving one early (`break`, an
 * exception in the loop, its `AbortSignal`) closes the connection, which is
 * how the protocol stops a stream; the job is not affected.
 *
 * @module
 */

import { ChannelClient, stripType } from "./channel.js";
import { type CallOptions, type ConnectOptions, Connection, unexpected } from "./connection.js";
import { ProtocolError } from "./errors.js";

/** A job's state; `succeeded`, `dead` and `canceled` are final. */
export type JobState = "queued" | "running" | "retry_wait" | "succeeded" | "dead" | "canceled";

/** The final states. */
export const FINAL_STATES: readonly JobState[] = ["succeeded", "dead", "canceled"];

/** Whether `state` is final. */
export function isFinal(state: JobState): boolean {
  return state === "succeeded" || state === "dead" || state === "canceled";
}

/** What to run, and how (wire names; only `argv` is required). */
export interface JobSpec {
  argv: string[];
  env?: Record<string, string>;
  /**
   * An absolute directory. `submit` sends this process's current directory when none is given, as a
   * process started here would run; on the wire, a spec without one runs in the daemon user's `$HOME`.
   */
  cwd?: string;
  /** Written to stdin: a string as UTF-8, any other JSON value as compact JSON. */
  input?: unknown;
  queue?: string;
  priority?: number;
  /** Idempotency key: a second submit with the same key returns the first job. */
  key?: string;
  max_attempts?: number;
  timeout_ms?: number;
  backoff_base_ms?: number;
  backoff_cap_ms?: number;
  run_at_ms?: number;
}

/** A job. */
export interface Job {
  id: number;
  queue: string;
  state: JobState;
  priority: number;
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  input_bytes: number;
  key: string | null;
  attempts: number;
  max_attempts: number;
  timeout_ms: number | null;
  backoff_base_ms: number;
  backoff_cap_ms: number;
  created_at_ms: number;
  run_at_ms: number;
  started_at_ms: number | null;
  finished_at_ms: number | null;
  exit_code: number | null;
  signal: number | null;
  last_error: string | null;
}

/** How an attempt ended (`null` while it runs). */
export type Outcome = "succeeded" | "failed" | "timed_out" | "spawn_failed" | "canceled" | "interrupted" | "lost";

/** One attempt of a job. */
export interface Attempt {
  n: number;
  started_at_ms: number;
  ended_at_ms: number | null;
  pid: number | null;
  outcome: Outcome | null;
  exit_code: number | null;
  signal: number | null;
  error: string | null;
  counted: boolean;
  stdout_bytes: number;
  stderr_bytes: number;
  truncated: boolean;
}

/** The answer to `submit`. */
export interface Submitted {
  job: Job;
  /** True when the idempotency key matched an earlier submit. */
  deduplicated: boolean;
}

/** Filters of `list` (wire names). */
export interface ListFilter {
  states?: JobState[];
  queue?: string;
  limit?: number;
  before_id?: number;
}

/** A page of jobs, newest first. */
export interface JobPage {
  /** Fewer than the limit when more would not fit in one frame (`next_before_id` is set then). */
  jobs: Job[];
  /** `before_id` of the next page; `null` on the last. */
  next_before_id: number | null;
  /** Matching jobs too large to send at all (proto-docs/queue.md). */
  omitted: number[];
}

/** Which dead jobs `retry` and `purge` act on: `ids`, or `all` (of `queue`). */
export type Selection = { ids: number[]; all?: never; queue?: never } | { all: true; queue?: string; ids?: never };

/** Counts per state. */
export interface StateCounts {
  queued: number;
  running: number;
  retry_wait: number;
  succeeded: number;
  dead: number;
  canceled: number;
}

/** The answer to `stats`. */
export interface QueueStats {
  states: StateCounts;
  queues: Record<string, StateCounts>;
  oldest_queued_ms: number | null;
  finished_last_minute: number;
  workers: number;
  busy_workers: number;
  store: string;
  store_recovered: { moved_to: string; reason: string; at_ms: number } | null;
}

/** Options of {@link QueueClient.logs}. */
export interface LogsOptions extends CallOptions {
  /** `stdout` (default) or `stderr`. */
  stream?: "stdout" | "stderr";
  /** The byte to start from (default 0). */
  offset?: number;
  /** Push new output as the job writes it, until the job is final. */
  follow?: boolean;
}

/** One item of a `logs` stream: data, then one end. */
export type LogEvent =
  | { type: "log_data"; offset: number; data: Buffer }
  | { type: "log_end"; offset: number; state: JobState };

/** A client of the `queue` channel. */
export class QueueClient extends ChannelClient {
  /** Connects and handshakes onto the `queue` channel. */
  static async connect(options: ConnectOptions = {}): Promise<QueueClient> {
    return new QueueClient(await Connection.open("queue", options));
  }

  /** Submits a job; resolves once it is durable. */
  async submit(spec: JobSpec, options?: CallOptions): Promise<Submitted> {
    const request = { ...spec, cwd: spec.cwd ?? currentDir(), type: "submit" };
    const { job, deduplicated } = await this.call<Submitted>("submit", request, "submitted", options);
    return { job, deduplicated };
  }

  /** One job and its attempts, oldest first. */
  async get(id: number, options?: CallOptions): Promise<{ job: Job; attempts: Attempt[] }> {
    const { job, attempts } = await this.call<{ job: Job; attempts: Attempt[] }>(
      `get job ${id}`,
      { type: "get", id },
      "job",
      options,
    );
    return { job, attempts };
  }

  /** A page of jobs, newest first. */
  async list(filter: ListFilter = {}, options?: CallOptions): Promise<JobPage> {
    const page = await this.call<Partial<JobPage>>("list", { ...filter, type: "list" }, "jobs", options);
    return { jobs: page.jobs ?? [], next_before_id: page.next_before_id ?? null, omitted: page.omitted ?? [] };
  }

  /** Cancels a job (a running one is killed first); returns it, canceled. */
  async cancel(id: number, options?: CallOptions): Promise<Job> {
    return (await this.call<{ job: Job }>(`cancel job ${id}`, { type: "cancel", id }, "canceled", options)).job;
  }

  /**
   * The job as it is now, then each change of its state, ending with the
   * job in a final state.
   */
  async *wait(id: number, options: CallOptions = {}): AsyncGenerator<Job, void, undefined> {
    const exchange = await this.begin(`wait for job ${id}`, options);
    try {
      const sent = exchange.send({ type: "wait", id });
      if (sent) await sent;
      for (;;) {
        const event = await exchange.readAnswer();
        if (event.type !== "job_event") throw unexpected("job_event", event);
        const job = event.job as Job;
        if (isFinal(job.state)) {
          // The stream is over: free the connection before handing the last event out.
          exchange.complete();
          exchange.end();
          yield job;
          return;
        }
        yield job;
      }
    } finally {
      exchange.end("the caller stopped waiting");
    }
  }

  /** Follows a job until it ends; returns it in its final state. */
  async waitForEnd(id: number, options: CallOptions & { onEvent?: (job: Job) => void } = {}): Promise<Job> {
    let last: Job | undefined;
    for await (const job of this.wait(id, options)) {
      options.onEvent?.(job);
      last = job;
    }
    if (last === undefined) throw new ProtocolError(`the wait for job ${id} ended without an event`);
    return last;
  }

  /**
   * A job's captured output: `log_data` items (raw bytes), then one
   * `log_end` with the offset after the last byte and the job's state.
   */
  async *logs(id: number, options: LogsOptions = {}): AsyncGenerator<LogEvent, void, undefined> {
    const request: Record<string, unknown> = { type: "logs", id };
    if (options.stream !== undefined) request.stream = options.stream;
    if (options.offset !== undefined) request.offset = options.offset;
    if (options.follow) request.follow = true;
    const exchange = await this.begin(`logs of job ${id}`, options);
    try {
      const sent = exchange.send(request);
      if (sent) await sent;
      for (;;) {
        const event = await exchange.readAnswer();
        if (event.type === "log_data") {
          yield { type: "log_data", offset: event.offset as number, data: Buffer.from(event.data as string, "base64") };
        } else if (event.type === "log_end") {
          exchange.complete();
          exchange.end();
          yield { type: "log_end", offset: event.offset as number, state: event.state as JobState };
          return;
        } else {
          throw unexpected("log_data or log_end", event);
        }
      }
    } finally {
      exchange.end("the caller stopped reading the log");
    }
  }

  /** Counts per state and queue, backlog, throughput. */
  async stats(options?: CallOptions): Promise<QueueStats> {
    return stripType(await this.call<QueueStats & { type?: string }>("stats", { type: "stats" }, "stats", options));
  }

  /** Requeues dead jobs with a fresh attempt budget; returns their ids. */
  async retry(selection: Selection, options?: CallOptions): Promise<number[]> {
    return (await this.call<{ ids: number[] }>("retry", { ...selection, type: "retry" }, "retried", options)).ids;
  }

  /** Deletes dead jobs and their logs; returns their ids. */
  async purge(selection: Selection, options?: CallOptions): Promise<number[]> {
    return (await this.call<{ ids: number[] }>("purge", { ...selection, type: "purge" }, "purged", options)).ids;
  }
}

/** This process's current directory; `undefined` (the daemon's default) when it was removed. */
function currentDir(): string | undefined {
  try {
    return process.cwd();
  } catch {
    return undefined;
  }
}
