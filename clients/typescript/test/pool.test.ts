import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { PoolClient, RequestError } from "../src/index.js";
import { TempState, waitFor } from "./helpers.js";

function hasCode(code: string) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof RequestError, `expected a RequestError, got ${String(error)}`);
    assert.equal(error.code, code);
    return true;
  };
}

describe("the pool channel", () => {
  const state = new TempState();
  let pools: PoolClient;
  before(async () => {
    await state.start();
    pools = await PoolClient.connect({ ...state.options, clientName: "pool-test/1.0" });
  });
  after(async () => {
    pools.close();
    await state.cleanup();
  });

  const scratch = {
    name: "scratch",
    create: ["sh", "-c", "mkdir -p {path}/work && echo built > {path}/work/marker"],
    reset: ["sh", "-c", "rm -rf {path}/work/tmp"],
  };

  test("define is idempotent and status reports the pool", async () => {
    const first = await pools.define(scratch);
    assert.deepEqual(first, { pool: "scratch", source: "runtime", changed: true });
    const again = await pools.define(scratch);
    assert.equal(again.changed, false);
    const report = await pools.status("scratch");
    assert.equal(report.pools.length, 1);
    const pool = report.pools[0];
    assert.equal(pool?.name, "scratch");
    assert.equal(pool?.source, "runtime");
    assert.equal(pool?.definition?.kind, "command");
    assert.ok(report.max_concurrent_builds >= 1);
    const all = await pools.status();
    assert.ok(all.pools.some((p) => p.name === "venv"));
  });

  test("take with timeout 0 from an empty pool is take_timeout; a built one is handed out", async () => {
    await assert.rejects(pools.take("scratch", { timeoutMs: 0 }), hasCode("take_timeout"));
    const lease = await pools.take("scratch");
    assert.match(lease.lease, /^[0-9a-f]{32}$/);
    assert.equal(lease.pool, "scratch");
    assert.equal(lease.holder, "pool-test/1.0");
    assert.equal(lease.holder_pid, process.pid);
    assert.ok(existsSync(join(lease.path, "work", "marker")));
    const held = await pools.leases("scratch");
    assert.deepEqual(held.map((l) => l.lease), [lease.lease]);
    const released = await pools.release(lease);
    assert.equal(released.outcome, "removed");
    assert.equal(released.lease, lease.lease);
    await assert.rejects(pools.release(lease.lease), hasCode("unknown_lease"));
    assert.deepEqual(await pools.leases("scratch"), []);
  });

  test("warm keeps ready resources, handed out warm; release with reuse resets them", async () => {
    const target = await pools.warm("scratch", 2);
    assert.deepEqual(target, { pool: "scratch", target: 2, previous: 0 });
    await waitFor("two ready scratch resources", 20_000, async () => (await pools.status("scratch")).pools[0]?.ready === 2);
    const lease = await pools.take("scratch", { timeoutMs: 0 });
    assert.equal(lease.warm, true);
    const released = await pools.release(lease, { reuse: true });
    assert.equal(released.outcome, "resetting");
    assert.equal(await pools.drain("scratch") >= 1, true);
    const after = (await pools.status("scratch")).pools[0];
    assert.equal(after?.target, 0);
  });

  test("withLease releases when the callback returns, and when it throws", async () => {
    let path = "";
    const value = await pools.withLease("scratch", (lease) => {
      path = lease.path;
      assert.ok(existsSync(lease.path));
      return 42;
    });
    assert.equal(value, 42);
    assert.deepEqual(await pools.leases("scratch"), []);
    await waitFor("the released resource to be removed", 10_000, () => !existsSync(path));
    await assert.rejects(
      pools.withLease("scratch", () => {
        throw new Error("the app failed");
      }),
      /the app failed/,
    );
    assert.deepEqual(await pools.leases("scratch"), []);
  });

  test("a failing build is build_failed, with the command's output", async () => {
    await pools.define({ name: "broken", create: ["sh", "-c", "echo cannot build >&2; exit 3"] });
    await assert.rejects(pools.take("broken", { timeoutMs: 20_000 }), (error: unknown) => {
      hasCode("build_failed")(error);
      assert.match((error as RequestError).wireMessage, /cannot build/);
      return true;
    });
  });

  test("errors: unknown pool, invalid lease, invalid definition, not runtime defined", async () => {
    await assert.rejects(pools.take("nope", { timeoutMs: 0 }), hasCode("unknown_pool"));
    await assert.rejects(pools.release("/tmp/not-a-lease"), hasCode("invalid_request"));
    await assert.rejects(pools.define({ name: "bad name!", create: ["true"] }), hasCode("invalid_definition"));
    await assert.rejects(pools.undefine("venv"), hasCode("not_runtime_defined"));
    await assert.rejects(pools.warm("scratch", 65), hasCode("invalid_request"));
    // The connection is still usable after each.
    assert.ok((await pools.status()).pools.length >= 1);
  });

  test("undefine removes a run-time definition", async () => {
    await pools.define({ name: "temporary", create: ["true"] });
    assert.deepEqual(await pools.undefine("temporary"), { pool: "temporary" });
    await assert.rejects(pools.take("temporary", { timeoutMs: 0 }), hasCode("unknown_pool"));
  });
});
