/**
 * The language-neutral conformance suite (tests/conformance/*.json, its
 * format in tests/conformance/README.md), run through this client's own
 * code: its Connection and handshake, its framing (FrameDecoder and the
 * frame encoders) and its error types. Only `send_bytes` writes around the
 * framing, on purpose.
 *
 * The cases are read at run time from the repository's tests/conformance/,
 * or from HEARTH_CONFORMANCE_DIR when set.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  type Accepted,
  Connection,
  ConnectionClosed,
  DEFAULT_MAX_FRAME,
  type Exchange,
  FrameDecoder,
  Refused,
  encodeFrame,
  encodeJsonFrame,
} from "../src/index.js";
import { REPO_ROOT, TempState } from "./helpers.js";

const CASES_DIR = process.env.HEARTH_CONFORMANCE_DIR || join(REPO_ROOT, "tests", "conformance");

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

interface CaseFile {
  config?: string;
  daemon_args?: string[];
  cases: Case[];
}

interface Case {
  name: string;
  channel: string;
  handshake?: Record<string, Json> | "none";
  timeout_ms?: number;
  steps: Step[];
}

type Step = Record<string, Json>;

const CLOSED: unique symbol = Symbol("closed");

/** What a case talks through: the client's connection, or (handshake "none") a socket with the client's framing. */
interface Wire {
  sendJson(value: Json): Promise<void>;
  sendFrame(payload: Buffer): Promise<void>;
  sendBytes(bytes: Buffer): Promise<void>;
  /** The next frame, CLOSED when the connection ended first, or a rejection after `timeoutMs`. */
  read(timeoutMs: number, what: string): Promise<Buffer | typeof CLOSED>;
  close(): void;
}

function deadline<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`nothing arrived within ${timeoutMs} ms while waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/** A handshaked client Connection, held by one exchange for the whole case. */
class ClientWire implements Wire {
  constructor(
    private readonly conn: Connection,
    private readonly exchange: Exchange,
  ) {
    // Every frame the daemon sends belongs to this case, even unprompted
    // ones (idle_timeout): keep the exchange in flight throughout.
    exchange.inFlight = true;
  }

  async sendJson(value: Json): Promise<void> {
    await this.exchange.send(value as object);
    this.exchange.inFlight = true;
  }

  async sendFrame(payload: Buffer): Promise<void> {
    await this.exchange.sendData(payload);
  }

  async sendBytes(bytes: Buffer): Promise<void> {
    await this.conn.write(bytes);
  }

  read(timeoutMs: number, what: string): Promise<Buffer | typeof CLOSED> {
    const frame = this.exchange.readFrame().catch((error: unknown): typeof CLOSED => {
      if (error instanceof ConnectionClosed) return CLOSED;
      throw error;
    });
    frame.catch(() => undefined);
    return deadline(frame, timeoutMs, what);
  }

  close(): void {
    this.exchange.end();
    this.conn.close();
  }
}

/** A socket that sends nothing by itself; frames go through the client's encoder and decoder. */
class RawWire implements Wire {
  private readonly decoder = new FrameDecoder(DEFAULT_MAX_FRAME);
  private readonly frames: Buffer[] = [];
  private ended = false;
  private failure: unknown;
  private wake: (() => void) | undefined;

  private constructor(private readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      try {
        this.frames.push(...this.decoder.push(chunk));
      } catch (error) {
        this.failure = error;
      }
      this.notify();
    });
    socket.on("error", () => {
      this.ended = true;
      this.notify();
    });
    socket.on("close", () => {
      this.ended = true;
      this.notify();
    });
  }

  static open(path: string): Promise<RawWire> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ path });
      socket.once("connect", () => {
        socket.off("error", reject);
        resolve(new RawWire(socket));
      });
      socket.once("error", reject);
    });
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  async sendJson(value: Json): Promise<void> {
    this.socket.write(encodeJsonFrame(value));
  }

  async sendFrame(payload: Buffer): Promise<void> {
    this.socket.write(encodeFrame(payload));
  }

  async sendBytes(bytes: Buffer): Promise<void> {
    this.socket.write(bytes);
  }

  read(timeoutMs: number, what: string): Promise<Buffer | typeof CLOSED> {
    const next = async (): Promise<Buffer | typeof CLOSED> => {
      for (;;) {
        if (this.failure) throw this.failure;
        const frame = this.frames.shift();
        if (frame !== undefined) return frame;
        if (this.ended) return CLOSED;
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    };
    return deadline(next(), timeoutMs, what);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A connection the daemon refused: nothing more arrives. */
class RefusedWire implements Wire {
  async sendJson(): Promise<void> {}
  async sendFrame(): Promise<void> {}
  async sendBytes(): Promise<void> {}
  async read(): Promise<typeof CLOSED> {
    return CLOSED;
  }
  close(): void {}
}

// --- patterns ----------------------------------------------------------------

const TYPE_PATTERNS: Record<string, (v: Json) => boolean> = {
  $string: (v) => typeof v === "string",
  $int: (v) => typeof v === "number" && Number.isInteger(v),
  $number: (v) => typeof v === "number",
  $bool: (v) => typeof v === "boolean",
  $array: (v) => Array.isArray(v),
  $object: (v) => typeof v === "object" && v !== null && !Array.isArray(v),
  $null: (v) => v === null,
};

/** Matches `value` against `pattern`; returns why not, or undefined. Captures go into `captures`. */
function match(pattern: Json, value: Json | undefined, captures: Map<string, Json>, at = "$"): string | undefined {
  if (value === undefined) return `${at}: missing`;
  if (typeof pattern === "string" && pattern.startsWith("$")) {
    if (pattern.startsWith("$$")) return value === pattern.slice(1) ? undefined : `${at}: ${show(value)} is not ${show(pattern.slice(1))}`;
    if (pattern === "$any") return undefined;
    const check = TYPE_PATTERNS[pattern];
    if (!check) throw new Error(`${at}: unknown pattern ${pattern} in the case file`);
    return check(value) ? undefined : `${at}: ${show(value)} is not ${pattern}`;
  }
  if (pattern === null || typeof pattern !== "object") {
    if (typeof pattern === "number" && typeof value === "number") return pattern === value ? undefined : `${at}: ${value} is not ${pattern}`;
    return pattern === value ? undefined : `${at}: ${show(value)} is not ${show(pattern)}`;
  }
  if (Array.isArray(pattern)) {
    if (!Array.isArray(value)) return `${at}: ${show(value)} is not an array`;
    if (value.length !== pattern.length) return `${at}: ${value.length} elements, not ${pattern.length}`;
    for (let i = 0; i < pattern.length; i++) {
      const why = match(pattern[i] as Json, value[i], captures, `${at}[${i}]`);
      if (why) return why;
    }
    return undefined;
  }
  const first = Object.keys(pattern)[0];
  if (first === "$capture") {
    const inner = pattern.match;
    if (inner !== undefined) {
      const why = match(inner, value, captures, at);
      if (why) return why;
    }
    captures.set(pattern.$capture as string, value);
    return undefined;
  }
  if (first === "$one_of") {
    const reasons: string[] = [];
    for (const option of pattern.$one_of as Json[]) {
      const trial = new Map(captures);
      const why = match(option, value, trial, at);
      if (!why) {
        for (const [k, v] of trial) captures.set(k, v);
        return undefined;
      }
      reasons.push(why);
    }
    return `${at}: matches none of $one_of (${reasons.join("; ")})`;
  }
  if (first === "$contains") {
    if (!Array.isArray(value)) return `${at}: ${show(value)} is not an array`;
    for (const wanted of pattern.$contains as Json[]) {
      const found = value.some((element, i) => {
        const trial = new Map(captures);
        if (match(wanted, element, trial, `${at}[${i}]`)) return false;
        for (const [k, v] of trial) captures.set(k, v);
        return true;
      });
      if (!found) return `${at}: no element matches ${show(wanted)}`;
    }
    return undefined;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return `${at}: ${show(value)} is not an object`;
  for (const [key, expected] of Object.entries(pattern)) {
    if (expected === "$absent") {
      if (key in value) return `${at}.${key}: present (${show(value[key] as Json)}), expected absent`;
      continue;
    }
    const why = match(expected, value[key], captures, `${at}.${key}`);
    if (why) return why;
  }
  return undefined;
}

/** Replaces `${NAME}` with captured values. */
function substitute(value: Json, captures: Map<string, Json>): Json {
  if (typeof value === "string") {
    const whole = /^\$\{([^}]+)\}$/.exec(value);
    if (whole) return captured(whole[1] as string, captures);
    return value.replace(/\$\{([^}]+)\}/g, (_, name: string) => {
      const v = captured(name, captures);
      return typeof v === "string" ? v : JSON.stringify(v);
    });
  }
  if (Array.isArray(value)) return value.map((v) => substitute(v, captures));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, captures)]));
  }
  return value;
}

function captured(name: string, captures: Map<string, Json>): Json {
  if (!captures.has(name)) throw new Error(`\${${name}} was never captured`);
  return captures.get(name) as Json;
}

function show(value: Json | undefined): string {
  const text = JSON.stringify(value) ?? "undefined";
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

function parse(frame: Buffer, what: string): Json {
  try {
    return JSON.parse(frame.toString("utf8")) as Json;
  } catch {
    throw new Error(`${what}: the frame is not JSON: ${show(frame.toString("utf8"))}`);
  }
}

// --- running a case -----------------------------------------------------------

async function runCase(c: Case, socket: string): Promise<void> {
  const timeoutMs = c.timeout_ms ?? 10_000;
  const captures = new Map<string, Json>();
  let wire: Wire;
  let accepted: Accepted | undefined;
  let refused: Refused | undefined;
  if (c.handshake === "none") {
    wire = await RawWire.open(socket);
  } else {
    try {
      const conn = await Connection.open(c.channel, { socket, timeoutMs }, c.handshake);
      accepted = conn.accepted;
      wire = new ClientWire(conn, await conn.begin(c.name, undefined));
    } catch (error) {
      if (!(error instanceof Refused)) throw error;
      refused = error;
      wire = new RefusedWire();
    }
    const first = c.steps[0] ?? {};
    if (refused && !("expect_refused" in first)) {
      throw new Error(`the handshake was refused: ${refused.message}`);
    }
  }
  try {
    for (const [index, step] of c.steps.entries()) {
      const where = `step ${index + 1} ${show(step).slice(0, 120)}`;
      try {
        await runStep(step, index, c, wire, { accepted, refused }, captures, timeoutMs);
      } catch (error) {
        throw new Error(`${c.name}, ${where}: ${(error as Error).message}`);
      }
    }
  } finally {
    wire.close();
  }
}

async function runStep(
  rawStep: Step,
  index: number,
  c: Case,
  wire: Wire,
  handshake: { accepted: Accepted | undefined; refused: Refused | undefined },
  captures: Map<string, Json>,
  timeoutMs: number,
): Promise<void> {
  const keys = Object.keys(rawStep).filter((k) => k !== "allow");
  if (keys.length !== 1) throw new Error(`a step has exactly one action, not ${keys.join(", ")}`);
  const action = keys[0] as string;
  const step = substitute(rawStep as Json, captures) as Step;
  const value = step[action] as Json;
  const readJson = async (what: string): Promise<Json> => {
    const frame = await wire.read(timeoutMs, what);
    if (frame === CLOSED) throw new Error(`the connection closed while waiting for ${what}`);
    return parse(frame, what);
  };
  switch (action) {
    case "send":
      return wire.sendJson(value);
    case "send_text":
      return wire.sendFrame(Buffer.from(value as string, "utf8"));
    case "send_raw":
      return wire.sendFrame(Buffer.from(value as string, "base64"));
    case "send_bytes":
      return wire.sendBytes(Buffer.from(value as string, "base64"));
    case "expect": {
      const got = await readJson(`a frame matching ${show(value)}`);
      const why = match(value, got, captures);
      if (why) throw new Error(`${why}\n  received: ${show(got)}`);
      return;
    }
    case "expect_until": {
      const allow = (step.allow as Json[] | undefined) ?? [];
      for (let n = 0; n < 1000; n++) {
        const got = await readJson(`a frame matching ${show(value)}`);
        if (!match(value, got, captures)) return;
        if (!allow.some((p) => !match(p, got, new Map(captures)))) {
          throw new Error(`a frame matches neither the pattern nor an allowed one: ${show(got)}`);
        }
      }
      throw new Error("no frame matched within 1000 frames");
    }
    case "expect_data": {
      const hash = createHash("sha256");
      const parts: Buffer[] = [];
      let length = 0;
      for (;;) {
        const frame = await wire.read(timeoutMs, "data frames up to the end marker");
        if (frame === CLOSED) throw new Error("the connection closed inside the data");
        if (frame.length === 0) break;
        length += frame.length;
        hash.update(frame);
        if (typeof value === "string") parts.push(frame);
      }
      if (typeof value === "string") {
        assert.equal(Buffer.concat(parts).toString("base64"), value, "the data received");
      } else {
        const expected = value as { length: number; sha256: string };
        assert.equal(length, expected.length, "the data's length");
        assert.equal(hash.digest("hex"), expected.sha256, "the data's sha256");
      }
      return;
    }
    case "expect_accepted": {
      if (index !== 0 || c.handshake === "none") throw new Error("expect_accepted is only the first step of a case with a handshake");
      if (!handshake.accepted) throw new Error("the handshake was not accepted");
      const why = match(value, handshake.accepted as unknown as Json, captures);
      if (why) throw new Error(`${why}\n  received: ${show(handshake.accepted as unknown as Json)}`);
      return;
    }
    case "expect_refused": {
      if (c.handshake !== "none") {
        if (index !== 0) throw new Error("with the client's handshake, expect_refused is the first step");
        if (!handshake.refused) throw new Error("the handshake was accepted");
        assert.equal(handshake.refused.code, value, "the refusal's code");
        return;
      }
      const pattern: Json = { ok: false, protocol: 1, error: { code: value, message: "$string" } };
      const got = await readJson(`a refused handshake with ${String(value)}`);
      const why = match(pattern, got, captures);
      if (why) throw new Error(`${why}\n  received: ${show(got)}`);
      return;
    }
    case "expect_closed": {
      const frame = await wire.read(timeoutMs, "the daemon to close the connection");
      if (frame !== CLOSED) throw new Error(`a frame arrived instead of the close: ${show(frame.toString("utf8"))}`);
      return;
    }
    default:
      throw new Error(`unknown step ${action}`);
  }
}

// --- the files ------------------------------------------------------------------

const files = existsSync(CASES_DIR)
  ? readdirSync(CASES_DIR)
      .filter((f) => f.endsWith(".json"))
      .sort()
  : [];

if (!existsSync(CASES_DIR)) {
  // Only a checkout without the suite (an older tree) gets here.
  test("the conformance suite", { skip: `no tests/conformance/ at ${CASES_DIR}` }, () => undefined);
} else if (files.length === 0) {
  test("the conformance suite", () => assert.fail(`${CASES_DIR} holds no *.json cases`));
}

for (const file of files) {
  const suite = JSON.parse(readFileSync(join(CASES_DIR, file), "utf8")) as CaseFile;
  describe(`conformance: ${file}`, () => {
    const state = new TempState();
    before(async () => {
      if (suite.config !== undefined) state.writeConfig(suite.config);
      await state.start(suite.daemon_args ?? []);
    });
    after(() => state.cleanup());
    const names = new Set<string>();
    for (const c of suite.cases) {
      assert.ok(!names.has(c.name), `case ${c.name} appears twice`);
      names.add(c.name);
      const budget = (c.timeout_ms ?? 10_000) * Math.max(1, c.steps.length) + 10_000;
      test(c.name, { timeout: budget }, () => runCase(c, state.socket));
    }
  });
}
