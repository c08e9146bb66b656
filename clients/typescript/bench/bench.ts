/**
 * The TypeScript client's speed, each figure beside a baseline measured in
 * the same run against the same kind of daemon:
 *
 * - ping round trip (one connection): p50 and p99, beside a minimal loop on
 *   a raw socket doing the same framing;
 * - durable queue submits per second (16 connections, jobs parked a day
 *   ahead so that none runs), beside the same minimal loop;
 * - blob put throughput of a file, beside `hearth blob put` (the Rust CLI)
 *   on the same file;
 * - events read per second, replaying what the daemon keeps
 *   (`subscribe({ since: 0 })`), beside the same minimal loop subscribing and
 *   parsing each frame.
 *
 * `npm run bench`. Uses `HEARTH_DAEMON_BIN` / `HEARTH_CLI_BIN` when set,
 * else the repository's release build when there is one, else the debug
 * build. Knobs: `HEARTH_BENCH_PINGS` (20000), `HEARTH_BENCH_SUBMITS`
 * (4000), `HEARTH_BENCH_BLOB_MIB` (256), `HEARTH_BENCH_EVENTS` (20000),
 * `HEARTH_BENCH_ROUNDS` (5).
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, openSync, writeSync, closeSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { join } from "node:path";

import { BlobClient, QueueClient, StatusClient } from "../src/index.js";
import { REPO_ROOT, TempState } from "../test/helpers.js";

const knob = (name: string, fallback: number): number => Number(process.env[name] ?? fallback) || fallback;
const PINGS = knob("HEARTH_BENCH_PINGS", 20_000);
const SUBMITS = knob("HEARTH_BENCH_SUBMITS", 4000);
const BLOB_MIB = knob("HEARTH_BENCH_BLOB_MIB", 256);
const EVENTS = knob("HEARTH_BENCH_EVENTS", 20_000);
const ROUNDS = knob("HEARTH_BENCH_ROUNDS", 5);
const CONNECTIONS = 16;

function binary(env: string, name: string): string {
  const explicit = process.env[env];
  if (explicit) return explicit;
  const release = join(REPO_ROOT, "target", "release", name);
  return existsSync(release) ? release : join(REPO_ROOT, "target", "debug", name);
}
const HEARTHD = binary("HEARTH_DAEMON_BIN", "hearthd");
const HEARTH = binary("HEARTH_CLI_BIN", "hearth");
process.env.HEARTH_DAEMON_BIN = HEARTHD;

function line(label: string, value: string): void {
  console.log(`  ${label.padEnd(64)} ${value}`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] as number;
}

async function withDaemon<T>(use: (state: TempState) => Promise<T>): Promise<T> {
  const state = new TempState();
  try {
    state.writeConfig("[blob]\nhttp = false\n");
    await state.start();
    return await use(state);
  } finally {
    await state.cleanup();
  }
}

// --- the baseline: a minimal loop on a raw socket -----------------------------

/** The least a Node program can do: write a frame, wait for one frame back. */
class RawLoop {
  private buffered: Buffer = Buffer.alloc(0);
  private waiting: ((frame: Buffer) => void) | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => {
      this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
      while (this.buffered.length >= 4) {
        const length = this.buffered.readUInt32BE(0);
        if (this.buffered.length < 4 + length) break;
        const frame = this.buffered.subarray(4, 4 + length);
        this.buffered = this.buffered.subarray(4 + length);
        const waiting = this.waiting;
        this.waiting = undefined;
        waiting?.(frame);
      }
    });
  }

  static async open(path: string, channel: string): Promise<RawLoop> {
    const socket = netConnect({ path });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    const raw = new RawLoop(socket);
    const reply = JSON.parse((await raw.call({ channel, protocol: 1 })).toString()) as { ok: boolean };
    if (!reply.ok) throw new Error("the baseline's handshake was refused");
    return raw;
  }

  call(message: object): Promise<Buffer> {
    const payload = Buffer.from(JSON.stringify(message));
    const frame = Buffer.allocUnsafe(4 + payload.length);
    frame.writeUInt32BE(payload.length, 0);
    payload.copy(frame, 4);
    return new Promise<Buffer>((resolve) => {
      this.waiting = resolve;
      this.socket.write(frame);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

// --- ping ---------------------------------------------------------------------

async function pingLatencies(state: TempState, client: boolean): Promise<number[]> {
  const latencies: number[] = [];
  const warmup = Math.min(2000, PINGS / 10);
  if (client) {
    const status = await StatusClient.connect(state.options);
    for (let i = 0; i < warmup + PINGS; i++) {
      const start = process.hrtime.bigint();
      await status.ping();
      if (i >= warmup) latencies.push(Number(process.hrtime.bigint() - start) / 1000);
    }
    status.close();
  } else {
    const raw = await RawLoop.open(state.socket, "status");
    for (let i = 0; i < warmup + PINGS; i++) {
      const start = process.hrtime.bigint();
      const frame = await raw.call({ type: "ping" });
      if (i >= warmup) latencies.push(Number(process.hrtime.bigint() - start) / 1000);
      if (frame.length === 0) throw new Error("empty answer");
    }
    raw.close();
  }
  return latencies.sort((a, b) => a - b);
}

// --- queue submits ------------------------------------------------------------

async function submitRate(state: TempState, client: boolean): Promise<number> {
  const parkedUntil = Date.now() + 86_400_000;
  const perConnection = Math.ceil(SUBMITS / CONNECTIONS);
  const loops = await Promise.all(
    Array.from({ length: CONNECTIONS }, async (_, c) => {
      if (client) {
        const queue = await QueueClient.connect(state.options);
        return async () => {
          for (let i = 0; i < perConnection; i++) {
            await queue.submit({ argv: ["true", `c${c}-${i}`], run_at_ms: parkedUntil });
          }
          queue.close();
        };
      }
      const raw = await RawLoop.open(state.socket, "queue");
      return async () => {
        for (let i = 0; i < perConnection; i++) {
          const answer = await raw.call({ type: "submit", argv: ["true", `c${c}-${i}`], run_at_ms: parkedUntil });
          if (answer.length === 0) throw new Error("empty answer");
        }
        raw.close();
      };
    }),
  );
  const start = performance.now();
  await Promise.all(loops.map((loop) => loop()));
  return (perConnection * CONNECTIONS) / ((performance.now() - start) / 1000);
}

// --- blob put -------------------------------------------------------------------

function makeFile(path: string, mib: number): string {
  const fd = openSync(path, "w");
  const hash = createHash("sha256");
  const chunk = Buffer.alloc(1024 * 1024);
  for (let n = 0; n < mib; n++) {
    for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((n * 2654435761 + i * 40503) >>> 0, i);
    hash.update(chunk);
    writeSync(fd, chunk);
  }
  closeSync(fd);
  return `sha256:${hash.digest("hex")}`;
}

async function putSeconds(file: string, expected: string, client: boolean): Promise<number> {
  return withDaemon(async (state) => {
    const start = performance.now();
    if (client) {
      const blobs = await BlobClient.connect(state.options);
      const stored = await blobs.putFile(file);
      blobs.close();
      if (stored.hash !== expected) throw new Error(`stored ${stored.hash}, expected ${expected}`);
    } else {
      const run = spawnSync(HEARTH, ["blob", "put", "--no-spawn", "--json", "--state-dir", state.stateDir, file], {
        encoding: "utf8",
      });
      if (run.status !== 0 || !run.stdout.includes(expected.slice(7))) {
        throw new Error(`hearth blob put failed: ${run.stdout}${run.stderr}`);
      }
    }
    return (performance.now() - start) / 1000;
  });
}

// --- events -------------------------------------------------------------------------

/** Publishes `count` events: puts of a stored blob, one round trip and one event each. */
async function publish(state: TempState, count: number): Promise<void> {
  const perConnection = Math.ceil(count / CONNECTIONS);
  const content = Buffer.from("an event");
  await Promise.all(
    Array.from({ length: CONNECTIONS }, async () => {
      const blobs = await BlobClient.connect(state.options);
      const { hash } = await blobs.put(content);
      for (let i = 1; i < perConnection; i++) await blobs.put(content, { sha256: hash });
      blobs.close();
    }),
  );
}

/** Events per second read by replaying every event the daemon keeps. */
async function replayRate(state: TempState, client: boolean): Promise<number> {
  const start = performance.now();
  let read = 0;
  if (client) {
    const status = await StatusClient.connect(state.options);
    const events = await status.subscribe({ since: 0 });
    const last = events.seq;
    for await (const notice of events) {
      if (notice.type !== "event") throw new Error(`the replay lagged by ${notice.missed}`);
      read++;
      if (notice.seq === last) break;
    }
    status.close();
  } else {
    read = await rawReplay(state.socket);
  }
  return read / ((performance.now() - start) / 1000);
}

/** The baseline: a raw socket that handshakes, subscribes and parses each frame's JSON. */
function rawReplay(path: string): Promise<number> {
  const frame = (value: object): Buffer => {
    const payload = Buffer.from(JSON.stringify(value));
    const header = Buffer.allocUnsafe(4);
    header.writeUInt32BE(payload.length, 0);
    return Buffer.concat([header, payload]);
  };
  return new Promise<number>((resolve, reject) => {
    const socket = netConnect({ path });
    let buffered: Buffer = Buffer.alloc(0);
    let frames = 0;
    let last = -1;
    socket.once("connect", () => socket.write(Buffer.concat([frame({ channel: "status", protocol: 1 }), frame({ type: "subscribe", since: 0 })])));
    socket.once("error", reject);
    socket.on("data", (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      let offset = 0;
      while (buffered.length - offset >= 4) {
        const length = buffered.readUInt32BE(offset);
        if (buffered.length - offset < 4 + length) break;
        const value = JSON.parse(buffered.toString("utf8", offset + 4, offset + 4 + length)) as { seq?: number };
        offset += 4 + length;
        frames++;
        // The handshake's reply, then `subscribed` (the last event's number), then the events.
        if (frames === 2) last = value.seq as number;
        else if (frames > 2 && value.seq === last) {
          socket.destroy();
          resolve(frames - 2);
          return;
        }
      }
      buffered = buffered.subarray(offset);
    });
  });
}

// --- the run ----------------------------------------------------------------------

async function main(): Promise<void> {
  console.log(`hearth-client (TypeScript) bench: node ${process.version}, daemon ${HEARTHD}`);
  console.log(`${ROUNDS} rounds each, alternating client and baseline; medians of the rounds`);

  console.log(`\nping round trip, one connection (${PINGS} pings per round)`);
  const clientP50: number[] = [];
  const rawP50: number[] = [];
  const clientP99: number[] = [];
  const rawP99: number[] = [];
  await withDaemon(async (state) => {
    for (let r = 0; r < ROUNDS; r++) {
      const raw = await pingLatencies(state, false);
      const client = await pingLatencies(state, true);
      rawP50.push(percentile(raw, 0.5));
      rawP99.push(percentile(raw, 0.99));
      clientP50.push(percentile(client, 0.5));
      clientP99.push(percentile(client, 0.99));
    }
  });
  const pingRatio = median(clientP50) / median(rawP50);
  line("baseline (minimal loop on a raw socket) p50 / p99", `${median(rawP50).toFixed(1)} µs / ${median(rawP99).toFixed(1)} µs`);
  line("hearth-client StatusClient.ping() p50 / p99", `${median(clientP50).toFixed(1)} µs / ${median(clientP99).toFixed(1)} µs`);
  line("client p50 / baseline p50 (target: at most 1.3)", `${pingRatio.toFixed(2)}x`);

  console.log(`\ndurable queue submits, ${CONNECTIONS} connections (${SUBMITS} per round, a fresh daemon each)`);
  const clientRates: number[] = [];
  const rawRates: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    rawRates.push(await withDaemon((state) => submitRate(state, false)));
    clientRates.push(await withDaemon((state) => submitRate(state, true)));
  }
  const submitRatio = median(rawRates) / median(clientRates);
  line("baseline (minimal loop on raw sockets)", `${median(rawRates).toFixed(0)} submits/s`);
  line("hearth-client QueueClient.submit()", `${median(clientRates).toFixed(0)} submits/s`);
  line("baseline rate / client rate (target: at most 1.3)", `${submitRatio.toFixed(2)}x`);

  console.log(`\nblob put of a ${BLOB_MIB} MiB file (a fresh daemon each)`);
  const scratch = new TempState();
  try {
    const file = join(scratch.dir, "blob.bin");
    const hash = makeFile(file, BLOB_MIB);
    const clientSecs: number[] = [];
    const cliSecs: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      cliSecs.push(await putSeconds(file, hash, false));
      clientSecs.push(await putSeconds(file, hash, true));
    }
    // A durable put ends with an fsync of the whole blob, whose time varies
    // from round to round with the disk's other writers: best and median.
    const mibps = (s: number): string => `${(BLOB_MIB / s).toFixed(0)} MiB/s`;
    const both = (secs: number[]): string => `${mibps(Math.min(...secs))} best, ${mibps(median(secs))} median`;
    line("`hearth blob put FILE` (the Rust CLI, process start included)", both(cliSecs));
    line("hearth-client BlobClient.putFile()", both(clientSecs));
    line("client throughput / CLI throughput (best rounds)", `${(Math.min(...cliSecs) / Math.min(...clientSecs)).toFixed(2)}x`);
  } finally {
    await scratch.cleanup();
  }

  console.log(`\nevents replayed from the daemon's buffer (${EVENTS} per round)`);
  const events = new TempState();
  try {
    events.writeConfig(`[daemon]\nevent_buffer = ${EVENTS}\n\n[blob]\nhttp = false\n`);
    await events.start();
    await publish(events, EVENTS);
    const clientEvents: number[] = [];
    const rawEvents: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      rawEvents.push(await replayRate(events, false));
      clientEvents.push(await replayRate(events, true));
    }
    line("baseline (minimal loop on a raw socket)", `${median(rawEvents).toFixed(0)} events/s`);
    line("hearth-client StatusClient.subscribe({ since: 0 })", `${median(clientEvents).toFixed(0)} events/s`);
    line("baseline rate / client rate", `${(median(rawEvents) / median(clientEvents)).toFixed(2)}x`);
  } finally {
    await events.cleanup();
  }
}

await main();
