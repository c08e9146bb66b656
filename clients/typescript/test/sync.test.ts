import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  DocNotFound,
  InvalidDocName,
  type Json,
  NoDocument,
  NotAContainer,
  PatchError,
  PathNotFound,
  Refused,
  RequestError,
  SyncDoc,
  UnknownRevision,
  ValueTooLarge,
  WrongType,
  applyPatch,
  deleteOp,
  incrementOp,
  insertOp,
  putOp,
  spliceOp,
} from "../src/index.js";
import { TempState, within } from "./helpers.js";

describe("applyPatch", () => {
  test("applies each op as the daemon did, text indices in code points", () => {
    let doc: Json = { a: { n: 1, list: [1, 2, 3] }, t: "h😀llo" };
    for (const patch of [
      incrementOp(["a", "n"], 4),
      deleteOp(["a", "list", 0], 2),
      insertOp(["a", "list", 1], [9, 10]),
      putOp(["a", "list", 0], "x"),
      spliceOp(["t"], 1, 1, "e"),
      deleteOp(["t", 0]),
      putOp(["new"], { k: [] }),
    ]) {
      doc = applyPatch(doc, patch);
    }
    assert.deepEqual(doc, { a: { n: 5, list: ["x", 9, 10] }, t: "ello", new: { k: [] } });
    assert.throws(() => applyPatch(doc, putOp(["zz", "q"], 1)), PatchError);
    assert.deepEqual(applyPatch([1], insertOp(["a", "list", 0], [0]), ["a", "list"]), [0, 1]);
    assert.equal(applyPatch("old", putOp(["a"], "new"), ["a"]), "new");
    assert.equal(applyPatch("abc", spliceOp(["t"], 3, 0, "d"), ["t"]), "abcd");
    assert.throws(() => applyPatch({}, putOp(["b"], 1), ["a"]), PatchError);
  });
});

describe("the sync channel in view mode", () => {
  const state = new TempState();
  const open = (doc: string | null): Promise<SyncDoc> =>
    SyncDoc.open(doc, { ...state.options, clientName: "ts-sync-test/1" });
  const docs: SyncDoc[] = [];
  const track = async (doc: string | null): Promise<SyncDoc> => {
    const opened = await open(doc);
    docs.push(opened);
    return opened;
  };
  before(async () => {
    state.writeConfig('[blob]\nhttp = false\n\n[sync]\nmax_value_size = "2000"\n');
    await state.start();
  });
  after(async () => {
    for (const doc of docs) doc.close();
    await state.cleanup();
  });

  test("writes are read back and followed by a watcher", async () => {
    const writer = await track("ts/follow");
    const reader = await track("ts/follow");
    const w = await writer.write([putOp(["title"], "hello"), putOp(["cells"], []), putOp(["runs"], 0, "counter")]);
    assert.equal(w.stale, false);
    assert.deepEqual(await reader.get(), { revision: w.revision, value: { title: "hello", cells: [], runs: 0 } });
    const cells = await reader.watch(["cells"]);
    assert.deepEqual([cells.revision, cells.value], [w.revision, []]);
    // Several writes in flight at once: answers come in order.
    await Promise.all([
      writer.insert(["cells", 0], [{ source: "print(1)" }]),
      writer.put(["cells", 0, "source"], "print(1)", { as: "text" }),
      writer.splice(["cells", 0, "source"], 8, 0, "  # fixed"),
      writer.increment(["runs"], 2),
    ]);
    const last = await writer.delete(["title"]);
    const want = [{ source: "print(1)  # fixed" }];
    await within("the watched cells to change", 20_000, cells.until((v) => JSON.stringify(v) === JSON.stringify(want)));
    assert.deepEqual(await reader.get(), { revision: last.revision, value: { cells: want, runs: 2 } });
  });

  test("presence and peers", async () => {
    const a = await track("ts/presence");
    const watch = await a.watch();
    const b = await track("ts/presence");
    await within("presence of both peers", 20_000, (async () => {
      while ((watch.peers?.length ?? 0) < 2) await watch.next();
    })());
    assert.deepEqual(new Set(watch.peers?.map((p) => p.id)), new Set([a.peer, b.peer]));
    const mine = (await a.peers()).filter((p) => p.you);
    assert.deepEqual(mine.map((p) => [p.id, p.client, p.mode]), [[a.peer, "ts-sync-test/1", "view"]]);
  });

  test("a stale base is merged and said", async () => {
    const doc = await track("ts/stale");
    const base = (await doc.put(["tags"], ["a", "b"])).revision;
    await doc.insert(["tags", 0], ["first"]);
    const w = await doc.insert(["tags", 2], ["after-b"], { base });
    assert.equal(w.stale, true);
    assert.deepEqual(await doc.value(["tags"]), ["first", "a", "b", "after-b"]);
    await assert.rejects(doc.put(["x"], 1, { base: ["00".repeat(32)] }), UnknownRevision);
  });

  test("bad input is typed and keeps the connection", async () => {
    const doc = await track("ts/errors");
    await doc.write([putOp(["title"], "text"), putOp(["obj"], {})]);
    const cases: Array<[new (...args: never[]) => RequestError, ReturnType<typeof putOp>]> = [
      [PathNotFound, putOp(["no", "such"], 1)],
      [NotAContainer, putOp(["title", "x"], 1)],
      [WrongType, insertOp(["obj", "k"], [1])],
      [ValueTooLarge, putOp(["big"], "x".repeat(3000))],
    ];
    // All or none: the good op before the bad one is not applied either.
    for (const [error, op] of cases) await assert.rejects(doc.write([putOp(["first"], 1), op]), error);
    await assert.rejects(doc.get(["missing"]), PathNotFound);
    assert.deepEqual(await doc.value(), { title: "text", obj: {} }, "nothing of the bad writes applied");
    await assert.rejects(open("Bad/Name"), (e: unknown) => e instanceof InvalidDocName && e instanceof Refused);
  });

  test("an aborted call drops its answer and the connection serves on", async () => {
    const doc = await track("ts/abort");
    const controller = new AbortController();
    const aborted = doc.put(["a"], 1, { signal: controller.signal });
    controller.abort();
    await assert.rejects(aborted, { code: "aborted" });
    assert.deepEqual(await doc.value(), { a: 1 }, "the write went out; its answer was read and dropped");
  });

  test("reconnecting with since gets only the patches", async () => {
    const doc = await open("ts/since");
    await doc.put(["n"], 1);
    const first = await doc.watch();
    const kept = { revision: first.revision, value: first.value };
    doc.close();
    const other = await track("ts/since");
    await other.put(["m"], 2);
    const again = await track("ts/since");
    const watch = await again.watch([], { since: kept.revision, keep: kept.value });
    assert.deepEqual(watch.value, { n: 1, m: 2 });
    assert.deepEqual(watch.revision, (await again.get()).revision);
  });

  test("a control connection lists, inspects and closes rooms", async () => {
    const member = await track("ts/ctl/a");
    await member.put(["x"], 1);
    const control = await track(null);
    assert.deepEqual((await control.list("ts/ctl/")).map((d) => d.doc), ["ts/ctl/a"]);
    const report = await control.inspect("ts/ctl/a");
    assert.equal(report.loaded, true);
    assert.deepEqual(report.peers.map((p) => p.id), [member.peer]);
    await assert.rejects(control.inspect("ts/ctl/none"), DocNotFound);
    await assert.rejects(control.get(), NoDocument);
    assert.equal(await control.closeRoom("ts/ctl/a"), 1);
    await assert.rejects(member.get(), (e: unknown) => {
      assert.ok(e instanceof Error && "code" in e);
      assert.ok(["room_closed", "connection_closed"].includes(String(e.code)), String(e));
      return true;
    });
    const reopened = await track("ts/ctl/a");
    assert.deepEqual(await reopened.value(), { x: 1 }, "the evicted room reloads from disk");
  });
});
