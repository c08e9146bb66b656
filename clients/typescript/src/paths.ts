/**
 * Where a daemon's files live, resolved exactly as the Rust side does
 * (proto-docs/lifecycle.md): an explicit value, else `HEARTH_STATE_DIR` /
 * `HEARTH_SOCKET`, else the platform default; relative paths are made
 * absolute against the current directory.
 *
 * @module
 */

import { isAbsolute, join, resolve } from "node:path";

import { PathError } from "./errors.js";

/** Environment variable that overrides the state directory. */
export const ENV_STATE_DIR = "HEARTH_STATE_DIR";
/** Environment variable that overrides the socket path. */
export const ENV_SOCKET = "HEARTH_SOCKET";
/** The socket's file name inside the state directory. */
export const SOCKET_FILE = "hearth.sock";
/** `daemon.json`: discovery information, written once the daemon is up. */
export const INFO_FILE = "daemon.json";
/** `daemon.lock`: the singleton lock, holding the daemon's pid. */
export const LOCK_FILE = "daemon.lock";
/** Optional settings. */
export const CONFIG_FILE = "config.toml";

/** A daemon's state directory and socket. */
export interface Paths {
  stateDir: string;
  socket: string;
}

/**
 * Explicit values, else `HEARTH_STATE_DIR` / `HEARTH_SOCKET`, else the
 * platform default ({@link defaultStateDir}), with the socket at
 * `<stateDir>/hearth.sock`. Empty values count as unset.
 */
export function resolvePaths(explicit: { stateDir?: string | undefined; socket?: string | undefined } = {}): Paths {
  const stateDir = absolute(nonEmpty(explicit.stateDir) ?? envPath(ENV_STATE_DIR) ?? defaultStateDir());
  const socketOverride = nonEmpty(explicit.socket) ?? envPath(ENV_SOCKET);
  return { stateDir, socket: socketOverride !== undefined ? absolute(socketOverride) : join(stateDir, SOCKET_FILE) };
}

/**
 * The platform's default state directory. Linux and other Unix:
 * `$XDG_STATE_HOME/hearth` when `XDG_STATE_HOME` is an absolute path, else
 * `~/.local/state/hearth`; macOS: `~/Library/Application Support/hearth`.
 * `~` is `$HOME`, as on the Rust side.
 */
export function defaultStateDir(): string {
  const home = envPath("HOME");
  if (process.platform === "darwin") {
    if (home === undefined) throw noHome();
    return join(home, "Library/Application Support/hearth");
  }
  const xdg = process.env.XDG_STATE_HOME;
  if (xdg !== undefined && isAbsolute(xdg)) return join(xdg, "hearth");
  if (home === undefined) throw noHome();
  return join(home, ".local/state/hearth");
}

/** The longest socket path (bytes, without the NUL) `connect` accepts: 107 on Linux, 103 on macOS and the BSDs. */
export function maxSocketPathLength(): number {
  return process.platform === "linux" ? 107 : 103;
}

/** Throws {@link PathError} (`socket_path_too_long`) when `socket` does not fit `sockaddr_un`. */
export function checkSocketPath(socket: string): void {
  const length = Buffer.byteLength(socket);
  const max = maxSocketPathLength();
  if (length > max) {
    throw new PathError(
      "socket_path_too_long",
      `socket path ${JSON.stringify(socket)} is ${length} bytes, longer than the platform limit of ${max} bytes; ` +
        `use a shorter state directory or set the socket (${ENV_SOCKET}) to a shorter path`,
    );
  }
}

function noHome(): PathError {
  return new PathError(
    "no_home",
    `cannot choose a state directory: HOME is not set; pass stateDir or set ${ENV_STATE_DIR}`,
  );
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === "" ? undefined : value;
}

function envPath(name: string): string | undefined {
  return nonEmpty(process.env[name]);
}

function absolute(path: string): string {
  return isAbsolute(path) ? path : resolve(path);
}
