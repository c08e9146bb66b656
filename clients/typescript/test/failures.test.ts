/**
 * A daemon that dies mid-call, and calls cancelled with an AbortSignal:
 * each ends with a typed error (never a hang), and no answer is ever read
 * by the wrong call.
 */
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import {
  Aborted,
  BlobClient,
  ConnectionClosed,
  HearthError,
  PoolClient,
  QueueClient,
  StatusClient,
  Timeout,
} from "../src/index.js";
import { TempState, waitFor, within } from "./helpers.js";

function isClosed(error: unknown): boolean {
  assert.ok(error instanceof ConnectionClosed, `expected ConnectionClosed, got ${String(error)}`);
  assert.equal(error.code, "connection_closed");
  return true;
}

test("a daemon killed while a wait streams ends the stream with ConnectionClosed", async () => {
  const state = new TempState();
  try {
    const daemon = await state.start();
    const queue = await QueueClient.connect(state.options);
    const { job } = await queue.submit({ argv: ["sleep", "600"] });
    const events = queue.wait(job.id);
    const first = await events.next();
    assert.equal(first.done, false);
    const rest = assert.rejects(async () => {
      for await (const _ of events) {
        // Drain until the connection breaks.
      }
    }, isClosed);
    await daemon.kill("SIGKILL");
    await within("the wait to fail after the daemon died", 10_000, rest);
    await assert.rejects(queue.stats(), isClosed);
  } finally {
    await state.cleanup();
  }
});

test("a daemon killed during a blob get or put fails the transfer, typed", async () => {
  const state = new TempState();
  try {
    const daemon = await state.start();
    const blobs = await BlobClient.connect(state.options);
    const big = Buffer.alloc(64 * 1024 * 1024, 5);
    const { hash } = await blobs.put(big);
    const { stream } = await blobs.get(hash);
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next();
    const uploader = await BlobClient.connect(state.options);
    let produced = 0;
    let release: () => void = () => undefined;
    const started = new Promise<void>((resolve) => (release = resolve));
    async function* endless(): AsyncGenerator<Buffer> {
      for (;;) {
        produced += 1;
        if (produced === 4) release();
        yield Buffer.alloc(1024 * 1024, 9);
      }
    }
    const put = assert.rejects(uploader.put(endless()), isClosed);
    await within("the upload to get going", 10_000, started);
    await daemon.kill("SIGKILL");
    await within("the put to fail", 10_000, put);
    const download = (async () => {
      for (;;) if ((await iterator.next()).done) break;
    })();
    await within("the get to fail", 10_000, assert.rejects(download, isClosed));
  } finally {
    await state.cleanup();
  }
});

test("aborting a wait closes its connection; the next call says why", async () => {
  const state = new TempState();
  try {
    await state.start();
    const queue = await QueueClient.connect(state.options);
    const { job } = await queue.submit({ argv: ["sleep", "600"] });
    const controller = new AbortController();
    const waiting = (async () => {
      for await (const event of queue.wait(job.id, { signal: controller.signal })) {
        if (event.state === "running") controller.abort();
      }
    })();
    await within(
      "the aborted wait to reject",
      10_000,
      assert.rejects(waiting, (error: unknown) => {
        assert.ok(error instanceof Aborted);
        assert.equal(error.code, "aborted");
        assert.equal(error.name, "AbortError");
        return true;
      }),
    );
    assert.equal(queue.closed, true);
    await assert.rejects(queue.stats(), (error: unknown) => isClosed(error) && /aborted/.test(String(error)));
    // The job itself is not affected.
    const other = await QueueClient.connect(state.options);
    assert.equal((await other.get(job.id)).job.state, "running");
    await other.cancel(job.id);
    other.close();
  } finally {
    await state.cleanup();
  }
});

test("aborting a call still waiting for its turn leaves the connection in step", async () => {
  const state = new TempState();
  try {
    await state.start();
    const queue = await QueueClient.connect(state.options);
    const control = await QueueClient.connect(state.options);
    const { job } = await control.submit({ argv: ["sleep", "600"] });
    const done = queue.waitForEnd(job.id);
    const controller = new AbortController();
    const queued = queue.stats({ signal: controller.signal });
    controller.abort();
    await assert.rejects(queued, Aborted);
    assert.equal(queue.closed, false);
    await control.cancel(job.id);
    assert.equal((await within("the wait to end", 10_000, done)).state, "canceled");
    assert.ok((await queue.stats()).states.canceled >= 1);
    queue.close();
    control.close();
  } finally {
    await state.cleanup();
  }
});

test("AbortSignal.timeout on a take waiting for a slow build is a Timeout; the take is undone", async () => {
  const state = new TempState();
  try {
    await state.start();
    const pools = await PoolClient.connect(state.options);
    await pools.define({ name: "slow", create: ["sleep", "2"] });
    await assert.rejects(pools.take("slow", { signal: AbortSignal.timeout(200) }), (error: unknown) => {
      assert.ok(error instanceof Timeout, `expected Timeout, got ${String(error)}`);
      assert.equal(error.code, "timeout");
      return true;
    });
    assert.equal(pools.closed, true);
    const other = await PoolClient.connect(state.options);
    // The build goes on; its resource is never handed over.
    await waitFor("the abandoned take's build to finish", 20_000, async () => (await other.status("slow")).pools[0]?.builds === 1);
    assert.equal((await other.status("slow")).pools[0]?.taken, 0);
    assert.deepEqual(await other.leases("slow"), []);
    other.close();
  } finally {
    await state.cleanup();
  }
});

test("aborting a put mid-upload closes the connection and the daemon discards the data", async () => {
  const state = new TempState();
  try {
    await state.start();
    const blobs = await BlobClient.connect(state.options);
    const controller = new AbortController();
    let sent = 0;
    async function* slow(): AsyncGenerator<Buffer> {
      for (;;) {
        sent += 1;
        if (sent === 3) controller.abort();
        yield Buffer.alloc(1024 * 1024, 3);
      }
    }
    await within(
      "the aborted put to reject",
      10_000,
      assert.rejects(blobs.put(slow(), { signal: controller.signal }), Aborted),
    );
    assert.equal(blobs.closed, true);
    const tmp = join(state.stateDir, "blobs", "tmp");
    await waitFor("the aborted put's temp file to be removed", 10_000, () => readdirSync(tmp).length === 0);
    const usage = await (await BlobClient.connect(state.options)).usage();
    assert.equal(usage.count, 0);
  } finally {
    await state.cleanup();
  }
});

test("aborting a download stream errors it with Aborted", async () => {
  const state = new TempState();
  try {
    await state.start();
    const blobs = await BlobClient.connect(state.options);
    const { hash } = await blobs.put(Buffer.alloc(32 * 1024 * 1024, 1));
    const controller = new AbortController();
    const { stream } = await blobs.get(hash, { signal: controller.signal });
    const reading = (async () => {
      let n = 0;
      for await (const _ of stream) if (++n === 2) controller.abort();
    })();
    await within("the aborted download to fail", 10_000, assert.rejects(reading, Aborted));
    assert.equal(blobs.closed, true);
  } finally {
    await state.cleanup();
  }
});

test("a connect aborted before it starts, or by its signal, is Aborted", async () => {
  const state = new TempState();
  try {
    await state.start();
    await assert.rejects(StatusClient.connect({ ...state.options, signal: AbortSignal.abort() }), Aborted);
    const status = await StatusClient.connect(state.options);
    await assert.rejects(status.ping({ signal: AbortSignal.abort() }), Aborted);
    // Nothing was sent: the connection is fine.
    await status.ping();
    status.close();
    await assert.rejects(status.ping(), (error: unknown) => error instanceof HearthError && error.code === "connection_closed");
  } finally {
    await state.cleanup();
  }
});

test("an idle connection the daemon closes says why at the next call", async () => {
  const state = new TempState();
  try {
    await state.start(["--connection-idle-timeout", "300ms"]);
    const status = await StatusClient.connect(state.options);
    await status.ping();
    await waitFor("the daemon to close the idle connection", 10_000, () => status.closed);
    await assert.rejects(status.ping(), (error: unknown) => {
      assert.ok(error instanceof ConnectionClosed);
      assert.equal(error.daemonError?.code, "idle_timeout");
      assert.match(error.message, /idle_timeout/);
      return true;
    });
  } finally {
    await state.cleanup();
  }
});
