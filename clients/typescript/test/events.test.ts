/**
 * Event subscriptions against a real hearthd: every kind jobs, pools and
 * blobs publish, filters, resuming after a reconnect, a subscriber that
 * falls behind, unsubscribing, the daemon stopping, AbortSignal; and a
 * newer daemon's kinds and fields.
 */
import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  Aborted,
  BlobClient,
  type EventKind,
  type EventStream,
  type HearthEvent,
  InvalidRequest,
  type Notice,
  PoolClient,
  QueueClient,
  ShuttingDown,
  StatusClient,
  Timeout,
  encodeJsonFrame,
  FrameDecoder,
} from "../src/index.js";
import { TempState, waitFor, within } from "./helpers.js";

/** The deadline of every wait on a stream. */
const LONG = 20_000;
const FAR_FUTURE_MS = 4102444800000;

/** The next notice of `notices`, within {@link LONG}; the stream must not end. */
async function nextNotice(notices: AsyncIterator<Notice>, what: string): Promise<Notice> {
  const next = await within(what, LONG, notices.next());
  assert.ok(!next.done, `the stream ended while waiting for ${what}`);
  return next.value;
}

/** The next event (a lag fails the test). */
async function nextEvent(notices: AsyncIterator<Notice>, what: string): Promise<HearthEvent> {
  const notice = await nextNotice(notices, what);
  assert.ok(notice.type === "event", `lagged by ${notice.type === "lagged" ? notice.missed : 0} while waiting for ${what}`);
  return notice;
}

async function activeConnections(status: StatusClient): Promise<number> {
  return (await status.status()).connections.active;
}

describe("events", () => {
  const state = new TempState();
  let queue: QueueClient;
  let blobs: BlobClient;
  let pools: PoolClient;
  let status: StatusClient;
  before(async () => {
    state.writeConfig("[blob]\nhttp = false\n\n[queue]\nworkers = 2\n");
    await state.start();
    queue = await QueueClient.connect(state.options);
    blobs = await BlobClient.connect(state.options);
    pools = await PoolClient.connect(state.options);
    status = await StatusClient.connect(state.options);
  });
  after(async () => {
    for (const client of [queue, blobs, pools, status]) client.close();
    await state.cleanup();
  });

  async function subscriber(): Promise<StatusClient> {
    return StatusClient.connect(state.options);
  }

  test("every service tells what it did, in order", async () => {
    const events = await subscriber();
    try {
      const stream = await events.subscribe();
      const notices = stream[Symbol.asyncIterator]();
      let last = stream.seq;
      const next = async (what: string): Promise<HearthEvent> => {
        const event = await nextEvent(notices, what);
        assert.equal(event.seq, last + 1, `sequence numbers grow by one: ${JSON.stringify(event)}`);
        last = event.seq;
        return event;
      };

      const { job } = await queue.submit({ argv: ["true"] });
      const states: Array<[string | null, string | null]> = [];
      while (states.length < 3) {
        const event = await next("the job's three state changes");
        assert.equal(event.kind, "job_state");
        if (event.kind !== "job_state") continue;
        assert.deepEqual([event.id, event.queue, event.service], [job.id, "default", "queue"]);
        states.push([event.from, event.to]);
      }
      assert.deepEqual(states, [
        [null, "queued"],
        ["queued", "running"],
        ["running", "succeeded"],
      ]);

      const stored = await blobs.put(Buffer.from("an event"));
      const put = await next("the blob put");
      assert.deepEqual(put, { ...put, service: "blob", kind: "blob_put", hash: stored.hash, size: 8, existed: false });
      await blobs.put(Buffer.from("an event"));
      assert.deepEqual(await next("the second put").then((e) => e.kind === "blob_put" && e.existed), true);
      await blobs.delete(stored.hash);
      const deleted = await next("the blob delete");
      assert.deepEqual(deleted, { ...deleted, kind: "blob_delete", hash: stored.hash, size: 8 });
      await blobs.put(Buffer.from("to collect"));
      await next("the put to collect");
      const report = await blobs.gc({ targetBytes: 0 });
      const collected = await next("the collection");
      assert.ok(collected.kind === "blob_gc", JSON.stringify(collected));
      assert.deepEqual([collected.removed, collected.bytes], [report.removed, report.freed_bytes]);
      assert.ok(collected.removed >= 1);

      await pools.define({ name: "scratch", create: ["true"], size: 0 });
      const lease = await pools.take("scratch", { timeoutMs: 30_000 });
      await pools.release(lease);
      const poolEvents: HearthEvent[] = [];
      while (poolEvents.at(-1)?.kind !== "pool_release") poolEvents.push(await next("the pool's build, take and release"));
      const [started, ended, take, release] = poolEvents;
      assert.deepEqual(
        poolEvents.map((e) => [e.service, e.kind]),
        [
          ["pool", "pool_build_started"],
          ["pool", "pool_build_ended"],
          ["pool", "pool_take"],
          ["pool", "pool_release"],
        ],
      );
      assert.ok(started?.kind === "pool_build_started" && ended?.kind === "pool_build_ended");
      assert.equal(started.pool, "scratch");
      assert.equal(ended.resource, started.resource);
      assert.equal(ended.ok, true);
      assert.ok(take?.kind === "pool_take" && release?.kind === "pool_release");
      assert.deepEqual([take.lease, take.warm, release.lease], [lease.lease, false, lease.lease]);
      assert.equal(stream.seq, release.seq, "the stream remembers where to resume");

      // Ending the subscription gives the connection back.
      await within("the unsubscribe", LONG, stream.unsubscribe());
      assert.ok(stream.ended);
      assert.deepEqual(await notices.next(), { done: true, value: undefined });
      assert.equal(events.closed, false);
      await events.ping();
    } finally {
      events.close();
    }
  });

  test("filters pick by service, kind and subject", async () => {
    const bySubject = await subscriber();
    const byService = await subscriber();
    try {
      const first = (await queue.submit({ argv: ["true"], run_at_ms: FAR_FUTURE_MS })).job.id;
      const wanted = first + 1;
      const subject = (await bySubject.subscribe({ kinds: ["job_state"], ids: [wanted] }))[Symbol.asyncIterator]();
      const service = (await byService.subscribe({ services: ["blob"] }))[Symbol.asyncIterator]();
      assert.equal((await queue.submit({ argv: ["true"], run_at_ms: FAR_FUTURE_MS })).job.id, wanted);
      await queue.cancel(first);
      await queue.submit({ argv: ["true"], run_at_ms: FAR_FUTURE_MS });
      await queue.cancel(wanted);
      const stored = await blobs.put(Buffer.from("filtered"));
      const submitted = await nextEvent(subject, "the wanted job's submit");
      const canceled = await nextEvent(subject, "the wanted job's cancel");
      assert.ok(submitted.kind === "job_state" && canceled.kind === "job_state");
      assert.deepEqual([submitted.id, submitted.to, canceled.id, canceled.to], [wanted, "queued", wanted, "canceled"]);
      const put = await nextEvent(service, "the blob put, after all those job events");
      assert.ok(put.kind === "blob_put");
      assert.equal(put.hash, stored.hash);
      await subject.return?.();
      await service.return?.();
      await bySubject.ping();
      await byService.ping();
    } finally {
      bySubject.close();
      byService.close();
    }
  });

  test("an unknown kind is refused and the connection stays usable", async () => {
    const events = await subscriber();
    try {
      await assert.rejects(events.subscribe({ kinds: ["job_state", "moon_phase" as EventKind] }), (error: unknown) => {
        assert.ok(error instanceof InvalidRequest);
        assert.match(error.wireMessage, /moon_phase/);
        return true;
      });
      await assert.rejects(events.subscribe({ services: ["moon"] }), InvalidRequest);
      await events.ping();
    } finally {
      events.close();
    }
  });

  test("leaving a loop unsubscribes; calls made meanwhile wait their turn", async () => {
    const events = await subscriber();
    try {
      const stream = await events.subscribe({ kinds: ["job_state"] });
      // Queued behind the subscription: answered once it ends.
      let answered = false;
      const pinged = events.ping().then(() => (answered = true));
      await queue.submit({ argv: ["true"], run_at_ms: FAR_FUTURE_MS });
      for await (const notice of stream) {
        assert.ok(notice.type === "event" && notice.kind === "job_state", JSON.stringify(notice));
        assert.equal(answered, false, "the ping waits for the subscription to end");
        break;
      }
      assert.ok(stream.ended);
      assert.equal(events.closed, false, "the loop ended with unsubscribe, not a close");
      assert.equal(await within("the queued ping", LONG, pinged), true);
      await events.ping();
    } finally {
      events.close();
    }
  });

  test("unsubscribe from outside ends a loop that waits", async () => {
    const events = await subscriber();
    try {
      const stream = await events.subscribe({ ids: ["no-such-subject"] });
      const notices: Notice[] = [];
      const loop = (async () => {
        for await (const notice of stream) notices.push(notice);
      })();
      await within("the unsubscribe", LONG, stream.unsubscribe());
      await within("the loop's end", LONG, loop);
      assert.deepEqual(notices, []);
      assert.ok(stream.ended);
      await events.ping();
    } finally {
      events.close();
    }
  });

  test("unsubscribe from the loop's body, unawaited, ends the loop", async () => {
    const events = await subscriber();
    try {
      const stream = await events.subscribe({ kinds: ["job_state"] });
      await queue.submit({ argv: ["true"], run_at_ms: FAR_FUTURE_MS });
      await queue.submit({ argv: ["true"], run_at_ms: FAR_FUTURE_MS });
      let unsubscribed: Promise<void> | undefined;
      const seen: Notice[] = [];
      const loop = (async () => {
        for await (const notice of stream) {
          seen.push(notice);
          unsubscribed ??= stream.unsubscribe();
        }
      })();
      await within("the loop's end", LONG, loop);
      await within("the unsubscribe", LONG, unsubscribed ?? Promise.reject(new Error("no event came")));
      assert.equal(seen.length, 1, "the events after it are skipped");
      await events.ping();
    } finally {
      events.close();
    }
  });

  test("a reconnecting subscriber resumes where it was", async () => {
    const first = await subscriber();
    const notices = (await first.subscribe())[Symbol.asyncIterator]();
    const { job } = await queue.submit({ argv: ["true"] });
    const seen = (await nextEvent(notices, "the submit's event")).seq;
    first.close();
    await within("the job's end", LONG, queue.waitForEnd(job.id));

    const again = await subscriber();
    try {
      const resumed = (await again.subscribe({ since: seen }))[Symbol.asyncIterator]();
      const running = await nextEvent(resumed, "the replayed start");
      const finished = await nextEvent(resumed, "the replayed end");
      assert.deepEqual([running.seq, finished.seq], [seen + 1, seen + 2], "nothing missed, nothing twice");
      assert.ok(finished.kind === "job_state");
      assert.deepEqual([finished.id, finished.to], [job.id, "succeeded"]);
      await resumed.return?.();
    } finally {
      again.close();
    }
  });

  test("an AbortSignal ends a waiting loop and closes the connection", async () => {
    const events = await subscriber();
    const before = await activeConnections(status);
    const controller = new AbortController();
    const stream = await events.subscribe({ ids: ["no-such-subject"], signal: controller.signal });
    const loop = (async () => {
      for await (const notice of stream) assert.fail(`nothing passes this filter: ${JSON.stringify(notice)}`);
    })();
    controller.abort();
    await assert.rejects(within("the aborted loop", LONG, loop), Aborted);
    assert.ok(stream.ended);
    assert.ok(events.closed, "an aborted subscription closes its connection");
    await waitFor("the daemon to see the close", LONG, async () => (await activeConnections(status)) < before);

    // `AbortSignal.timeout()` bounds a stream: a Timeout.
    const timed = await subscriber();
    const timeout = (async () => {
      for await (const notice of timed.events({ ids: ["no-such-subject"], signal: AbortSignal.timeout(200) })) {
        assert.fail(`nothing passes this filter: ${JSON.stringify(notice)}`);
      }
    })();
    await assert.rejects(within("the timed-out loop", LONG, timeout), Timeout);
    assert.ok(timed.closed);
  });
});

describe("a subscriber that falls behind", () => {
  // The daemon keeps 64 events; the subscriber's socket and this client's
  // read-ahead (1024 frames) hold a few thousand at most: 6000 events
  // overflow them all. Publishing takes a while, so the daemon's write
  // timeout is raised far above it.
  const EVENTS = 6000;
  const state = new TempState();
  before(async () => {
    state.writeConfig('[daemon]\nevent_buffer = 64\n\n[server]\nwrite_timeout = "10m"\n\n[blob]\nhttp = false\n');
    await state.start();
  });
  after(() => state.cleanup());

  test("is told what it missed, and the rest go on", { timeout: 180_000 }, async () => {
    const slow = await StatusClient.connect(state.options);
    const blobs = await BlobClient.connect(state.options);
    try {
      const stream = await slow.subscribe();
      const start = stream.seq;
      const { hash } = await blobs.put(Buffer.from("again and again"));
      // A put of a stored blob is one round trip, and one event.
      for (let i = 1; i < EVENTS; i++) await blobs.put(Buffer.from("again and again"), { sha256: hash });
      const { got, missed } = await within("the stalled subscriber's backlog", 60_000, drain(stream, start + EVENTS));
      assert.ok(missed > 0, `${EVENTS} events past a stalled reader: some were missed (${got} arrived)`);
      assert.equal(got + missed, EVENTS, "every event arrives or is counted as missed");
      await stream.unsubscribe();
      await slow.ping();
    } finally {
      slow.close();
      blobs.close();
    }
  });
});

async function drain(stream: EventStream, last: number): Promise<{ got: number; missed: number }> {
  let got = 0;
  let missed = 0;
  let seq = 0;
  const notices = stream[Symbol.asyncIterator]();
  while (seq < last) {
    const next = await notices.next();
    assert.ok(!next.done, "the stream ended early");
    const notice = next.value;
    if (notice.type === "lagged") {
      missed += notice.missed;
    } else {
      assert.ok(notice.seq > seq, `in order: ${notice.seq} after ${seq}`);
      seq = notice.seq;
      got += 1;
    }
  }
  return { got, missed };
}

test("a stopping daemon ends the stream with shutting_down", async () => {
  const state = new TempState();
  try {
    const daemon = await state.start();
    const events = await StatusClient.connect(state.options);
    const stream = await events.subscribe();
    // The loop's outcome, taken as soon as it settles (it does while the daemon stops).
    const outcome = (async () => {
      for await (const _ of stream);
    })().then(
      () => undefined,
      (error: unknown) => error,
    );
    await daemon.stop();
    const error = await within("the stream's end", LONG, outcome);
    assert.ok(error instanceof ShuttingDown, `ended with ${String(error)}`);
    assert.equal(error.code, "shutting_down");
    assert.ok(stream.ended);
    assert.ok(events.closed);
  } finally {
    await state.cleanup();
  }
});

// --- a newer daemon ----------------------------------------------------------

const NEWER_FRAMES = [
  // A known kind with a field this version does not know.
  { type: "event", seq: 11, at_ms: 1, service: "queue", kind: "job_state", id: 7, queue: "default", from: null, to: "queued", tenant: "acme" },
  // A kind this version does not know.
  { type: "event", seq: 12, at_ms: 2, service: "process", kind: "process_exited", name: "web", code: 0 },
  { type: "lagged", missed: 3 },
  { type: "event", seq: 16, at_ms: 3, service: "status", kind: "health_changed", from: "healthy", to: "degraded", codes: ["queue_backlog"] },
];

test("a newer daemon's kinds and fields do not break a loop", async () => {
  // No daemon this repository builds sends them, so this peer on a real
  // socket is scripted: the handshake, `subscribed`, the frames, then
  // `unsubscribed` and a `pong`.
  const dir = new TempState();
  const path = join(dir.dir, "newer.sock");
  const requests: unknown[] = [];
  const server = createServer((socket: Socket) => {
    const decoder = new FrameDecoder();
    socket.on("data", (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) {
        const request = JSON.parse(frame.toString("utf8")) as { type?: string; channel?: string };
        requests.push(request);
        if (request.channel !== undefined) {
          const daemon = { version: "9.0.0", pid: process.pid };
          socket.write(encodeJsonFrame({ ok: true, protocol: 1, daemon, channel: "status", max_frame: 1 << 24 }));
        } else if (request.type === "subscribe") {
          socket.write(encodeJsonFrame({ type: "subscribed", seq: 10 }));
          for (const notice of NEWER_FRAMES) socket.write(encodeJsonFrame(notice));
        } else if (request.type === "unsubscribe") {
          socket.write(encodeJsonFrame({ type: "unsubscribed" }));
        } else if (request.type === "ping") {
          socket.write(encodeJsonFrame({ type: "pong" }));
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  try {
    const client = await StatusClient.connect({ socket: path });
    const notices: Notice[] = [];
    for await (const notice of client.events({ kinds: ["job_state"], ids: [7], since: 10 })) {
      notices.push(notice);
      if (notices.length === NEWER_FRAMES.length) break;
    }
    await within("a ping after the loop", LONG, client.ping());
    client.close();
    assert.deepEqual(requests.slice(1), [
      { type: "subscribe", kinds: ["job_state"], ids: ["7"], since: 10 },
      { type: "unsubscribe" },
      { type: "ping" },
    ]);
    const [job, unknown, lagged, health] = notices;
    assert.deepEqual(job, NEWER_FRAMES[0]);
    assert.ok(unknown?.type === "event" && unknown.kind === "unknown");
    assert.deepEqual([unknown.seq, unknown.service, unknown.wireKind, unknown.fields.name], [12, "process", "process_exited", "web"]);
    assert.deepEqual(lagged, { type: "lagged", missed: 3 });
    assert.ok(health?.type === "event" && health.kind === "health_changed");
    assert.deepEqual([health.from, health.to, health.codes], ["healthy", "degraded", ["queue_backlog"]]);
  } finally {
    server.close();
    await dir.cleanup();
  }
});
