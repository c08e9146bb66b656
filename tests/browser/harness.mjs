// @ts-check
// A real hearthd on a temp state directory, and a real headless Chromium.

import { spawn, execFileSync } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bins = process.env.HEARTH_BIN_DIR ?? join(root, "target", "debug");
export const HEARTHD = join(bins, "hearthd");
export const HEARTH = join(bins, "hearth");
/** Debian's chromium; CHROMIUM overrides it. */
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** Where screenshots go (the one in docs/ is copied from here by hand). */
export const SHOTS = join(root, "target", "dashboard-screenshots");

/** This environment without the variables that would point hearth elsewhere. */
function cleanEnv() {
  /** @type {NodeJS.ProcessEnv} */
  const env = { ...process.env, HEARTH_DAEMON_BIN: HEARTHD };
  delete env.HEARTH_SOCKET;
  delete env.HEARTH_CONFIG;
  delete env.HEARTH_STATE_DIR;
  return env;
}

/**
 * Polls `condition` until it holds; fails naming `what` after `ms`.
 * @param {string} what
 * @param {() => boolean | Promise<boolean>} condition
 * @param {number} [ms]
 */
export async function waitFor(what, condition, ms = 20000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

/** A daemon on a temp state directory. */
export class Daemon {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), "hearth-browser-"));
    this.state = join(this.dir, "state");
    /** @type {import("node:child_process").ChildProcess | null} */
    this.child = null;
  }

  /** Starts hearthd in the foreground and waits for daemon.json. */
  async start() {
    const log = openSync(join(this.dir, "hearthd.log"), "w");
    this.child = spawn(HEARTHD, ["--state-dir", this.state, "--http-port", "0"], {
      stdio: ["ignore", "ignore", log],
      env: cleanEnv(),
    });
    closeSync(log);
    await waitFor("daemon.json with the dashboard's endpoint", () => {
      try {
        return Boolean(this.info().endpoints?.dashboard);
      } catch {
        return false;
      }
    });
  }

  /** @returns {Record<string, any>} */
  info() {
    return JSON.parse(readFileSync(join(this.state, "daemon.json"), "utf8"));
  }

  /**
   * Runs the CLI on this state directory and returns its stdout.
   * @param {string[]} args
   */
  hearth(args) {
    return execFileSync(HEARTH, ["--state-dir", this.state, ...args], {
      encoding: "utf8",
      timeout: 60000,
      stdio: ["ignore", "pipe", "pipe"],
      env: cleanEnv(),
    });
  }

  /** The URL `hearth dashboard` prints. */
  dashboardUrl() {
    return this.hearth(["dashboard", "--no-open"]).trim();
  }

  async stop() {
    const child = this.child;
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 15000))]);
      if (child.exitCode === null) child.kill("SIGKILL");
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Headless Chromium with a fresh profile and nothing that talks to the network. */
export async function browser() {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium; .ci/run does)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
    ],
  });
}
