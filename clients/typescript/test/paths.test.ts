import assert from "node:assert/strict";
import { join } from "node:path";
import { afterEach, test } from "node:test";

import { PathError, checkSocketPath, defaultStateDir, maxSocketPathLength, resolvePaths } from "../src/index.js";

const saved = { ...process.env };
afterEach(() => {
  for (const key of ["HEARTH_STATE_DIR", "HEARTH_SOCKET", "XDG_STATE_HOME", "HOME"]) {
    if (saved[key] === undefined) delete process.env[key];
    else process.env[key] = saved[key];
  }
});

test("explicit values win, then HEARTH_STATE_DIR and HEARTH_SOCKET", () => {
  process.env.HEARTH_STATE_DIR = "/env/state";
  process.env.HEARTH_SOCKET = "/env/s.sock";
  assert.deepEqual(resolvePaths({ stateDir: "/x/state", socket: "/x/s.sock" }), { stateDir: "/x/state", socket: "/x/s.sock" });
  assert.deepEqual(resolvePaths(), { stateDir: "/env/state", socket: "/env/s.sock" });
  delete process.env.HEARTH_SOCKET;
  assert.deepEqual(resolvePaths(), { stateDir: "/env/state", socket: "/env/state/hearth.sock" });
  process.env.HEARTH_STATE_DIR = "";
  process.env.HOME = "/home/ada";
  delete process.env.XDG_STATE_HOME;
  assert.equal(resolvePaths().stateDir, defaultStateDir());
});

test("relative paths are made absolute", () => {
  const paths = resolvePaths({ stateDir: "rel/state", socket: "rel.sock" });
  assert.equal(paths.stateDir, join(process.cwd(), "rel/state"));
  assert.equal(paths.socket, join(process.cwd(), "rel.sock"));
});

test("the platform default: XDG_STATE_HOME when absolute, else ~/.local/state", { skip: process.platform === "darwin" }, () => {
  delete process.env.HEARTH_STATE_DIR;
  process.env.HOME = "/home/ada";
  process.env.XDG_STATE_HOME = "/xdg";
  assert.equal(defaultStateDir(), "/xdg/hearth");
  process.env.XDG_STATE_HOME = "relative/xdg";
  assert.equal(defaultStateDir(), "/home/ada/.local/state/hearth");
  delete process.env.XDG_STATE_HOME;
  assert.equal(defaultStateDir(), "/home/ada/.local/state/hearth");
  delete process.env.HOME;
  assert.throws(() => defaultStateDir(), (e: unknown) => e instanceof PathError && e.code === "no_home");
});

test("a socket path longer than sockaddr_un allows is refused", () => {
  const max = maxSocketPathLength();
  checkSocketPath("/" + "a".repeat(max - 1));
  assert.throws(
    () => checkSocketPath("/" + "a".repeat(max)),
    (e: unknown) => e instanceof PathError && e.code === "socket_path_too_long" && e.message.includes(String(max)),
  );
});
