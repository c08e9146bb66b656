/**
 * Shared by the tests: a real `hearthd` (built by `cargo build --bins`) on a
 * temp state directory, and waits that always have a deadline and say what
 * they waited for. Nothing here sleeps to synchronise.
 */

import { type ChildProcess, spawn } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { HearthError, StatusClient } from "../src/index.js";

/** The repository's root (the directory with Cargo.toml). */
export const REPO_ROOT: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "Cargo.toml")) && existsSync(join(dir, "proto-docs"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the repository root (Cargo.toml) above the tests");
    dir = parent;
  }
})();

/** The package's directory (clients/typescript). */
export const PACKAGE_DIR = join(REPO_ROOT, "clients", "typescript");

function cargoBinary(name: string): string {
  const path = join(process.env.CARGO_TARGET_DIR ?? join(REPO_ROOT, "target"), "debug", name);
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`cargo build --bins\` at ${REPO_ROOT} first`);
  return path;
}

/** The `hearthd` the tests run: `HEARTH_DAEMON_BIN` when set, else the one cargo built. */
export const hearthdBin: () => string = (() => {
  const fromEnv = process.env.HEARTH_DAEMON_BIN;
  return () => (fromEnv !== undefined && fromEnv !== "" ? fromEnv : cargoBinary("hearthd"));
})();

/** The `hearth` CLI. */
export function hearthBin(): string {
  return cargoBinary("hearth");
}

/**
 * Polls `condition` with backoff until it holds; throws, naming `what`,
 * once `timeoutMs` has passed.
 */
export async function waitFor<T>(
  what: string,
  timeoutMs: number,
  condition: () => T | undefined | false | Promise<T | undefined | false>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let delay = 1;
  for (;;) {
    const value = await condition();
    if (value !== undefined && value !== false) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 50);
  }
}

/** `promise`, or an error naming `what` after `timeoutMs`. */
export async function within<T>(what: string, timeoutMs: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether process `pid` exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** A temp directory holding a state directory; `cleanup()` stops what runs on it and removes it. */
export class TempState {
  readonly dir: string;
  readonly stateDir: string;
  private readonly daemons: Daemon[] = [];
  private readonly detachedPids = new Set<number>();

  constructor() {
    // Short, so that the socket path fits sockaddr_un.
    this.dir = mkdtempSync(join(tmpdir(), "hearth-ts-"));
    this.stateDir = join(this.dir, "state");
  }

  get socket(): string {
    return join(this.stateDir, "hearth.sock");
  }

  /** Connect options for this state directory. */
  get options(): { stateDir: string } {
    return { stateDir: this.stateDir };
  }

  /** Writes `<stateDir>/config.toml`. */
  writeConfig(text: string): void {
    mkdirSync(this.stateDir, { recursive: true, mode: 0o700 });
    writeFileSync(join(this.stateDir, "config.toml"), text);
  }

  /** Starts `hearthd` in the foreground and waits until it answers. */
  async start(args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<Daemon> {
    const log = join(this.dir, `hearthd.${this.daemons.length}.log`);
    const fd = openSync(log, "a");
    const childEnv: NodeJS.ProcessEnv = { ...process.env, HEARTH_LOG: "debug", ...env };
    delete childEnv.HEARTH_SOCKET;
    delete childEnv.HEARTH_CONFIG;
    delete childEnv.HEARTH_STATE_DIR;
    const child = spawn(hearthdBin(), ["--state-dir", this.stateDir, ...args], {
      stdio: ["ignore", "ignore", fd],
      env: childEnv,
    });
    closeSync(fd);
    const daemon = new Daemon(child, log, this);
    this.daemons.push(daemon);
    await daemon.waitReady();
    return daemon;
  }

  /** Remembers a daemon started detached (by ensureDaemonRunning) so that cleanup stops it. */
  adopt(pid: number): void {
    this.detachedPids.add(pid);
  }

  /** Stops every daemon started here and removes the directory. */
  async cleanup(): Promise<void> {
    for (const daemon of this.daemons) await daemon.stop();
    for (const pid of this.detachedPids) await stopPid(pid, this.socket);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A `hearthd` child in the foreground. */
export class Daemon {
  private exited: Promise<void>;
  private exitStatus: string | undefined;

  constructor(
    readonly child: ChildProcess,
    readonly log: string,
    private readonly state: TempState,
  ) {
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exitStatus = signal ? `signal ${signal}` : `exit status ${String(code)}`;
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid as number;
  }

  logText(): string {
    try {
      return readFileSync(this.log, "utf8");
    } catch {
      return "";
    }
  }

  async waitReady(): Promise<void> {
    try {
      await waitFor("hearthd to answer a ping", 20_000, async () => {
        if (this.exitStatus !== undefined) throw new Error(`hearthd exited during start-up with ${this.exitStatus}`);
        try {
          const client = await StatusClient.connect({ ...this.state.options, timeoutMs: 2000 });
          try {
            await client.ping();
          } finally {
            client.close();
          }
          return true;
        } catch (error) {
          if (error instanceof HearthError) return false;
          throw error;
        }
      });
    } catch (error) {
      throw new Error(`${(error as Error).message}; log:\n${this.logText()}`);
    }
  }

  /** Sends `signal` and waits (with a deadline) until it has exited. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (this.exitStatus === undefined) this.child.kill(signal);
    await within(`hearthd ${this.pid} to exit after ${signal}`, 15_000, this.exited);
  }

  /** Asks it to stop, then waits; kills it if it does not stop in time. */
  async stop(): Promise<void> {
    if (this.exitStatus !== undefined) return;
    this.child.kill("SIGTERM");
    try {
      await within(`hearthd ${this.pid} to stop after SIGTERM`, 15_000, this.exited);
    } catch {
      await this.kill("SIGKILL");
    }
  }
}

/** Stops a detached daemon we started: `shutdown`, then SIGKILL if it lingers. */
export async function stopPid(pid: number, socket: string): Promise<void> {
  if (!alive(pid)) return;
  try {
    const client = await StatusClient.connect({ socket, timeoutMs: 2000 });
    try {
      await client.shutdown({ reason: "test cleanup" });
    } finally {
      client.close();
    }
    await waitFor(`hearthd ${pid} to exit after shutdown`, 15_000, () => !alive(pid));
  } catch {
    if (alive(pid)) process.kill(pid, "SIGKILL");
    await waitFor(`hearthd ${pid} to exit after SIGKILL`, 5_000, () => !alive(pid));
  }
}

/** The pids of running `hearthd` processes whose command line names `stateDir`. */
export function hearthdPidsFor(stateDir: string): number[] {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return pids;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8");
    } catch {
      continue;
    }
    const args = cmdline.split("\0");
    if ((args[0] ?? "").endsWith("hearthd") && args.includes(stateDir)) pids.push(Number(entry));
  }
  return pids;
}
