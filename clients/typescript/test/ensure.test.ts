import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  DaemonNotFound,
  NotRunning,
  SpawnFailed,
  StartFailed,
  StatusClient,
  ensureDaemonRunning,
  findDaemonBinary,
  versionLess,
} from "../src/index.js";
import { TempState, alive, hearthdBin, hearthdPidsFor, within } from "./helpers.js";

const CHILD = fileURLToPath(new URL("./fixtures/ensure-child.js", import.meta.url));

test("16 processes racing ensureDaemonRunning end with exactly one daemon", { timeout: 120_000 }, async () => {
  const state = new TempState();
  const go = join(state.dir, "go");
  try {
    const env: NodeJS.ProcessEnv = { ...process.env, HEARTH_STATE_DIR: state.stateDir, HEARTH_DAEMON_BIN: hearthdBin() };
    delete env.HEARTH_SOCKET;
    const runs = Array.from({ length: 16 }, () => {
      const child = spawn(process.execPath, [CHILD, go], { env, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      let err = "";
      child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
      child.stderr.on("data", (chunk: Buffer) => (err += chunk.toString()));
      return new Promise<{ pid?: number; spawned?: boolean; error?: string }>((resolve, reject) => {
        child.once("error", reject);
        child.once("close", (code) => {
          try {
            resolve(JSON.parse(out.trim()) as { pid?: number; spawned?: boolean; error?: string });
          } catch {
            reject(new Error(`an ensure process exited with ${String(code)} without a result: ${out} ${err}`));
          }
        });
      });
    });
    writeFileSync(go, "");
    const results = await within("16 ensure processes", 90_000, Promise.all(runs));
    for (const r of results) if (r.pid !== undefined) state.adopt(r.pid);
    const failures = results.filter((r) => r.error !== undefined);
    assert.deepEqual(failures, [], "every caller succeeds");
    const pids = new Set(results.map((r) => r.pid));
    assert.equal(pids.size, 1, `all callers got the same daemon: ${[...pids].join(", ")}`);
    assert.equal(results.filter((r) => r.spawned).length, 1, "exactly one caller started it");
    const [pid] = [...pids] as number[];
    assert.deepEqual(hearthdPidsFor(state.stateDir), [pid], "one hearthd process runs on the state directory");
  } finally {
    await state.cleanup();
  }
});

test("a running daemon is used, not replaced", async () => {
  const state = new TempState();
  try {
    const daemon = await state.start();
    const ensured = await ensureDaemonRunning({ ...state.options, daemonBin: hearthdBin() });
    assert.equal(ensured.daemon.pid, daemon.pid);
    assert.equal(ensured.spawned, false);
    assert.equal(ensured.socket, state.socket);
  } finally {
    await state.cleanup();
  }
});

test("a daemon that cannot start rejects with its own code and message", async () => {
  const state = new TempState();
  try {
    state.writeConfig("[server]\nmax_frame = \"not a size\"\n");
    await assert.rejects(ensureDaemonRunning({ ...state.options, daemonBin: hearthdBin() }), (error: unknown) => {
      assert.ok(error instanceof StartFailed, `expected StartFailed, got ${String(error)}`);
      assert.equal(error.code, "config_invalid");
      assert.match(error.wireMessage, /max_frame/);
      return true;
    });
    await assert.rejects(StatusClient.connect(state.options), NotRunning);
    assert.deepEqual(hearthdPidsFor(state.stateDir), []);
  } finally {
    await state.cleanup();
  }
});

test("an insecure state directory is the daemon's state_dir_insecure", async () => {
  const state = new TempState();
  try {
    const { mkdirSync, chmodSync } = await import("node:fs");
    mkdirSync(state.stateDir);
    chmodSync(state.stateDir, 0o777);
    await assert.rejects(
      ensureDaemonRunning({ ...state.options, daemonBin: hearthdBin() }),
      (error: unknown) => error instanceof StartFailed && error.code === "state_dir_insecure",
    );
  } finally {
    await state.cleanup();
  }
});

test("hearthd is found by the option, then HEARTH_DAEMON_BIN, then PATH", async () => {
  const saved = { bin: process.env.HEARTH_DAEMON_BIN, path: process.env.PATH };
  try {
    process.env.HEARTH_DAEMON_BIN = "/from/env/hearthd";
    assert.equal(findDaemonBinary("/explicit/hearthd"), "/explicit/hearthd");
    assert.equal(findDaemonBinary(), "/from/env/hearthd");
    delete process.env.HEARTH_DAEMON_BIN;
    process.env.PATH = `/nonexistent:${join(hearthdBin(), "..")}`;
    assert.equal(findDaemonBinary(), hearthdBin());
    process.env.PATH = "/nonexistent";
    assert.throws(() => findDaemonBinary(), DaemonNotFound);
    const state = new TempState();
    try {
      await assert.rejects(ensureDaemonRunning(state.options), DaemonNotFound);
      await assert.rejects(
        ensureDaemonRunning({ ...state.options, daemonBin: join(state.dir, "no-such-hearthd") }),
        SpawnFailed,
      );
    } finally {
      await state.cleanup();
    }
  } finally {
    if (saved.bin === undefined) delete process.env.HEARTH_DAEMON_BIN;
    else process.env.HEARTH_DAEMON_BIN = saved.bin;
    process.env.PATH = saved.path;
  }
});

test("ensure starts a detached daemon that outlives the call", async () => {
  const state = new TempState();
  try {
    const ensured = await ensureDaemonRunning({ ...state.options, daemonBin: hearthdBin() });
    state.adopt(ensured.daemon.pid);
    assert.equal(ensured.spawned, true);
    assert.ok(alive(ensured.daemon.pid));
    assert.ok(existsSync(join(state.stateDir, "daemon.json")));
    const client = await StatusClient.connect(state.options);
    assert.equal((await client.status()).pid, ensured.daemon.pid);
    client.close();
  } finally {
    await state.cleanup();
  }
});

test("versions compare as semver, a pre-release before its release", () => {
  assert.ok(versionLess("0.1.0", "0.2.0"));
  assert.ok(versionLess("0.9.9", "0.10.0"));
  assert.ok(versionLess("1.0.0-rc.1", "1.0.0"));
  assert.ok(!versionLess("1.0.0", "1.0.0"));
  assert.ok(!versionLess("1.0.0", "1.0.0-rc.1"));
  assert.ok(!versionLess("2.0.0", "1.9.9"));
  assert.ok(!versionLess("garbage", "1.0.0"));
  assert.ok(!versionLess("1.0.0+build", "1.0.0"));
});
