/**
 * `ensureDaemonRunning`: connect to the daemon, starting it if needed,
 * with the contract of the Rust client's (proto-docs/lifecycle.md).
 *
 * The daemon's singleton lock decides who runs: every caller that finds no
 * daemon runs `hearthd --detach`, and all but one of those report
 * `already_running` at once. So any number of concurrent callers, in any
 * number of processes, end with exactly one daemon, and all succeed.
 *
 * @module
 */

import { spawn } from "node:child_process";
import { statSync } from "node:fs";
import { delimiter, join } from "node:path";

import { abortError, DEFAULT_CLIENT_NAME } from "./connection.js";
import { DaemonNotFound, type DaemonIdent, HearthError, SpawnFailed, StartFailed, Timeout } from "./errors.js";
import { resolvePaths } from "./paths.js";
import { StatusClient } from "./status.js";
import { VERSION } from "./version.js";

/** Environment variable naming the `hearthd` binary to spawn. */
export const ENV_DAEMON_BIN = "HEARTH_DAEMON_BIN";

/** The default deadline of the whole call. */
export const DEFAULT_ENSURE_TIMEOUT_MS = 10_000;

/** Options of {@link ensureDaemonRunning}. */
export interface EnsureOptions {
  /** The state directory; else `HEARTH_STATE_DIR`, else the platform default. */
  stateDir?: string;
  /** The socket; else `HEARTH_SOCKET`, else `<stateDir>/hearth.sock`. */
  socket?: string;
  /** The `hearthd` to spawn; else `HEARTH_DAEMON_BIN`, else `hearthd` on `PATH`. */
  daemonBin?: string;
  /** Extra arguments for a spawned `hearthd` (e.g. `["--idle-timeout", "30m"]`). */
  daemonArgs?: string[];
  /** Deadline of the whole call (default 10 000 ms); {@link Timeout} after it. */
  timeoutMs?: number;
  /**
   * `never` (the default): use whatever daemon answers. `ifOlder`: ask a
   * daemon older than this library to drain and stop, and start a new one.
   */
  replace?: "never" | "ifOlder";
  /** `<name>/<version>` for handshakes. */
  clientName?: string;
  /** Cancels the call (a `hearthd --detach` it started is killed). */
  signal?: AbortSignal;
}

/** The daemon that answered. */
export interface Ensured {
  /** Its version and pid. */
  daemon: DaemonIdent;
  /** True when this call started it. */
  spawned: boolean;
  /** The older daemon this call replaced, if any. */
  replaced?: DaemonIdent;
  /** Its state directory and socket. */
  stateDir: string;
  socket: string;
}

/** The JSON line `hearthd --detach` prints. */
export type LaunchReport =
  | { event: "ready"; pid: number; version: string; socket: string }
  | { event: "already_running"; pid: number | null }
  | { event: "failed"; code: string; message: string };

/**
 * Connects to the daemon, starting it when none runs. Resolves once a
 * daemon answers a handshake. When `hearthd` cannot start, rejects with
 * {@link StartFailed} carrying the daemon's own code and message, not with
 * a timeout.
 */
export async function ensureDaemonRunning(options: EnsureOptions = {}): Promise<Ensured> {
  const paths = resolvePaths({ stateDir: options.stateDir, socket: options.socket });
  const timeoutMs = options.timeoutMs ?? DEFAULT_ENSURE_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  const clientName = options.clientName ?? DEFAULT_CLIENT_NAME;
  const signal = options.signal;
  const connect = (remaining: number): Promise<StatusClient> =>
    StatusClient.connect({ socket: paths.socket, clientName, timeoutMs: remaining, ...(signal ? { signal } : {}) });
  let spawned = false;
  let replaced: DaemonIdent | undefined;
  let waitWindow = 250;
  let drainingDelay = 5;
  const done = (daemon: DaemonIdent): Ensured => ({
    daemon,
    spawned,
    ...(replaced ? { replaced } : {}),
    stateDir: paths.stateDir,
    socket: paths.socket,
  });
  for (;;) {
    if (signal?.aborted) throw abortError("ensureDaemonRunning", signal);
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new Timeout(replaced ? "the older daemon to drain and stop" : "the daemon to answer", timeoutMs);
    }
    let client: StatusClient | undefined;
    try {
      client = await connect(remaining);
    } catch (error) {
      if (!(error instanceof HearthError && error.code === "not_running")) throw error;
    }
    if (client) {
      const daemon = client.daemon;
      if (replaced !== undefined && replaced.pid === daemon.pid) {
        // The old daemon still serves while it drains its running work; wait for it to go.
        client.close();
        await sleep(Math.min(drainingDelay, remaining), signal);
        drainingDelay = Math.min(drainingDelay * 2, 200);
        continue;
      }
      const older = options.replace === "ifOlder" && replaced === undefined && versionLess(daemon.version, VERSION);
      if (!older) {
        client.close();
        return done(daemon);
      }
      try {
        await client.shutdown({ reason: `replaced by a newer client (${clientName})`, drain: true });
      } finally {
        client.close();
      }
      replaced = daemon;
      continue;
    }
    const report = await launch(options, paths, deadline, timeoutMs);
    if (report.event === "ready") {
      spawned = true;
    } else if (report.event === "already_running") {
      // Another caller won the race, or an old daemon is still draining:
      // give it a moment to answer before trying again.
      const until = Math.min(Date.now() + waitWindow, deadline);
      waitWindow = Math.min(waitWindow * 2, 2000);
      const daemon = await pollUntil(connect, until, signal);
      if (daemon && (replaced === undefined || replaced.pid !== daemon.pid)) return done(daemon);
    } else {
      throw new StartFailed(report.code, report.message);
    }
  }
}

/** Polls the socket with backoff until a daemon answers or `until` passes. */
async function pollUntil(
  connect: (remaining: number) => Promise<StatusClient>,
  until: number,
  signal: AbortSignal | undefined,
): Promise<DaemonIdent | undefined> {
  let delay = 0.5;
  for (;;) {
    const remaining = until - Date.now();
    if (remaining <= 0) return undefined;
    try {
      const client = await connect(remaining);
      client.close();
      return client.daemon;
    } catch (error) {
      if (signal?.aborted) throw abortError("ensureDaemonRunning", signal);
      if (!(error instanceof HearthError)) throw error;
    }
    await sleep(Math.min(delay, Math.max(0, until - Date.now())), signal);
    delay = Math.min(delay * 2, 50);
  }
}

/** Runs `hearthd --detach` and reads its launch report. */
async function launch(
  options: EnsureOptions,
  paths: { stateDir: string; socket: string },
  deadline: number,
  timeoutMs: number,
): Promise<LaunchReport> {
  const bin = findDaemonBinary(options.daemonBin);
  const remaining = Math.max(1, deadline - Date.now());
  const args = [
    "--detach",
    "--ready-timeout",
    `${remaining}ms`,
    "--state-dir",
    paths.stateDir,
    "--socket",
    paths.socket,
    ...(options.daemonArgs ?? []),
  ];
  const { stdout, stderr, status } = await new Promise<{ stdout: string; stderr: string; status: string }>(
    (resolve, reject) => {
      const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on("data", (chunk: Buffer) => out.push(chunk));
      child.stderr.on("data", (chunk: Buffer) => err.push(chunk));
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        cleanup();
        reject(new Timeout("hearthd to start", timeoutMs));
      }, remaining);
      const onAbort = (): void => {
        child.kill("SIGKILL");
        cleanup();
        reject(abortError("ensureDaemonRunning", options.signal as AbortSignal));
      };
      options.signal?.addEventListener("abort", onAbort, { once: true });
      const cleanup = (): void => {
        clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
      };
      child.once("error", (error) => {
        cleanup();
        reject(new SpawnFailed(bin, error));
      });
      child.once("close", (code, signalName) => {
        cleanup();
        resolve({
          stdout: Buffer.concat(out).toString("utf8"),
          stderr: Buffer.concat(err).toString("utf8"),
          status: signalName ? `signal ${signalName}` : `exit status ${String(code)}`,
        });
      });
    },
  );
  const report = stdout
    .split("\n")
    .reverse()
    .map(parseLaunchReport)
    .find((r) => r !== undefined);
  return (
    report ?? {
      event: "failed",
      code: "launch_failed",
      message: `${bin} --detach exited with ${status} without a launch report: ${stderr.trim()}`,
    }
  );
}

function parseLaunchReport(line: string): LaunchReport | undefined {
  if (!line.trim().startsWith("{")) return undefined;
  try {
    const value = JSON.parse(line) as Record<string, unknown>;
    switch (value.event) {
      case "ready":
        return typeof value.pid === "number" ? (value as LaunchReport) : undefined;
      case "already_running":
        return value as LaunchReport;
      case "failed":
        return typeof value.code === "string" && typeof value.message === "string"
          ? (value as LaunchReport)
          : undefined;
      default:
        return undefined;
    }
  } catch {
    return undefined;
  }
}

/** Finds `hearthd`: `explicit`, else `HEARTH_DAEMON_BIN`, else on `PATH`. */
export function findDaemonBinary(explicit?: string): string {
  if (explicit !== undefined && explicit !== "") return explicit;
  const fromEnv = process.env[ENV_DAEMON_BIN];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, "hearthd");
    if (isExecutable(candidate)) return candidate;
  }
  throw new DaemonNotFound(`${ENV_DAEMON_BIN} (unset), $PATH`);
}

function isExecutable(path: string): boolean {
  try {
    const info = statSync(path);
    return info.isFile() && (info.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

/**
 * `a < b` for `major.minor.patch[-pre]` versions; a pre-release sorts
 * before its release. Unparseable versions never compare as older.
 */
export function versionLess(a: string, b: string): boolean {
  const parse = (v: string): { core: [number, number, number]; pre: boolean } | undefined => {
    const match = /^(\d+)\.(\d+)\.(\d+)(?:(-[^+]+)?(\+.*)?)?$/.exec(v);
    if (!match) return undefined;
    return { core: [Number(match[1]), Number(match[2]), Number(match[3])], pre: match[4] !== undefined };
  };
  const pa = parse(a);
  const pb = parse(b);
  if (!pa || !pb) return false;
  for (let i = 0; i < 3; i++) {
    const x = pa.core[i] as number;
    const y = pb.core[i] as number;
    if (x !== y) return x < y;
  }
  return pa.pre && !pb.pre;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError("ensureDaemonRunning", signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError("ensureDaemonRunning", signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
