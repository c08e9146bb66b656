import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { after, before, describe, test } from "node:test";

import { BlobClient, type BlobHash, BlobNotFound, RequestError } from "../src/index.js";
import { TempState, waitFor, within } from "./helpers.js";

function hasCode(code: string) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof RequestError, `expected a RequestError, got ${String(error)}`);
    assert.equal(error.code, code);
    return true;
  };
}

function sha256(data: Uint8Array): BlobHash {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

const EMPTY_HASH = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

describe("the blob channel", () => {
  const state = new TempState();
  let blobs: BlobClient;
  before(async () => {
    await state.start();
    blobs = await BlobClient.connect(state.options);
  });
  after(async () => {
    blobs.close();
    await state.cleanup();
  });

  test("put bytes, get them back whole and as a range, stat, has, list", async () => {
    const data = Buffer.from("hello, hearth");
    const stored = await blobs.put(data, { mediaType: "text/plain; charset=utf-8", name: "greeting.txt" });
    assert.deepEqual(stored, { hash: sha256(data), size: data.length, existed: false });
    assert.deepEqual(await blobs.getBytes(stored.hash), data);
    const { content, stream } = await blobs.get(stored.hash, { offset: 7, length: 6 });
    assert.deepEqual(content, {
      hash: stored.hash,
      size: data.length,
      offset: 7,
      length: 6,
      media_type: "text/plain; charset=utf-8",
    });
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    assert.equal(Buffer.concat(parts).toString(), "hearth");
    const info = await blobs.stat(stored.hash);
    assert.equal(info.name, "greeting.txt");
    assert.equal(info.pinned, false);
    assert.equal(await blobs.has(stored.hash), true);
    assert.equal(await blobs.has(EMPTY_HASH), false);
    const again = await blobs.put(data);
    assert.equal(again.existed, true);
    const listed = [];
    for await (const blob of blobs.listAll({ pageSize: 1 })) listed.push(blob.hash);
    assert.deepEqual(listed, [stored.hash]);
  });

  test("an announced hash that is stored sends no data; the empty blob is valid", async () => {
    const data = Buffer.from("announced");
    const first = await blobs.put(data, { sha256: sha256(data) });
    assert.equal(first.existed, false);
    // A source that fails if read: the daemon answers `stored` at once.
    const unread = new Readable({
      read() {
        this.destroy(new Error("the source was read"));
      },
    });
    const second = await blobs.put(unread, { sha256: sha256(data) });
    assert.deepEqual(second, { ...first, existed: true });
    const empty = await blobs.put(Buffer.alloc(0));
    assert.equal(empty.hash, EMPTY_HASH);
    assert.deepEqual(await blobs.getBytes(EMPTY_HASH), Buffer.alloc(0));
  });

  test("files in and out through Node streams", async () => {
    const source = join(state.dir, "in.bin");
    const data = Buffer.alloc(3 * 1024 * 1024 + 17);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 12)) & 0xff;
    writeFileSync(source, data);
    const stored = await blobs.putFile(source, { mediaType: "application/octet-stream" });
    assert.equal(stored.hash, sha256(data));
    assert.equal((await blobs.stat(stored.hash)).name, "in.bin");
    const copy = join(state.dir, "out.bin");
    const content = await blobs.getTo(stored.hash, createWriteStream(copy));
    assert.equal(content.length, data.length);
    assert.deepEqual(readFileSync(copy), data);
    // A Readable in, with a size announced.
    const again = await blobs.put(createReadStream(source), { size: data.length });
    assert.equal(again.existed, true);
  });

  test("pin, delete needs force, unpin, gc, usage", async () => {
    const data = Buffer.from("pinned content");
    const { hash } = await blobs.put(data, { pin: true });
    assert.equal((await blobs.stat(hash)).pinned, true);
    await assert.rejects(blobs.delete(hash), hasCode("blob_pinned"));
    await blobs.unpin(hash);
    assert.equal((await blobs.stat(hash)).pinned, false);
    await blobs.pin(hash);
    assert.equal(await blobs.delete(hash, { force: true }), data.length);
    await assert.rejects(blobs.stat(hash), BlobNotFound);
    const usage = await blobs.usage();
    assert.ok(usage.count >= 1);
    assert.match(usage.http_url ?? "", /^http:\/\/127\.0\.0\.1:\d+$/);
    const gc = await blobs.gc({ targetBytes: 0 });
    assert.equal(gc.target_bytes, 0);
    assert.equal(gc.usage.pinned_count, 0);
    assert.equal(gc.usage.count, 0);
  });

  test("hash and size mismatches; range not satisfiable; malformed hash", async () => {
    const data = Buffer.from("abc");
    await assert.rejects(blobs.put(data, { sha256: sha256(Buffer.from("abd")) }), hasCode("hash_mismatch"));
    await assert.rejects(blobs.put(data, { size: 4 }), hasCode("size_mismatch"));
    const { hash } = await blobs.put(data);
    await assert.rejects(blobs.get(hash, { offset: 4 }), hasCode("range_not_satisfiable"));
    await assert.rejects(blobs.stat("sha256:ABC"), hasCode("invalid_request"));
    await assert.rejects(blobs.getBytes(sha256(Buffer.from("never stored"))), hasCode("blob_not_found"));
    assert.equal(await blobs.has(hash), true);
  });

  test("a put the daemon rejects part-way ends at once, even while the source is idle", async () => {
    // More bytes than announced, then a source that yields nothing more
    // until the test ends: the daemon's size_mismatch must end the put.
    let release: () => void = () => undefined;
    const idle = new Promise<void>((resolve) => (release = resolve));
    async function* source(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(64 * 1024, 1);
      await idle;
    }
    try {
      await within(
        "the put to fail with size_mismatch",
        10_000,
        assert.rejects(blobs.put(source(), { size: 1024 }), hasCode("size_mismatch")),
      );
    } finally {
      release();
    }
    // The end marker was sent: the connection is in step.
    assert.equal(blobs.closed, false);
    const { hash } = await blobs.put(Buffer.from("after the mismatch"));
    assert.equal(await blobs.has(hash), true);
  });

  test("a source that fails closes the connection and the daemon discards the partial put", async () => {
    const client = await BlobClient.connect(state.options);
    async function* failing(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(2 * 1024 * 1024, 2);
      throw new Error("disk read error");
    }
    await assert.rejects(client.put(failing()), (error: unknown) => {
      assert.equal((error as { code?: string }).code, "io_error");
      assert.match(String(error), /disk read error/);
      return true;
    });
    assert.equal(client.closed, true);
    const tmp = join(state.stateDir, "blobs", "tmp");
    await waitFor("the partial put's temp file to be removed", 10_000, () => readdirSync(tmp).length === 0);
  });

  test("256 MiB streamed in and out with flat memory", { timeout: 240_000 }, async () => {
    const total = 256 * 1024 * 1024;
    const chunk = 1024 * 1024;
    const template = Buffer.alloc(chunk);
    for (let i = 0; i < chunk; i++) template[i] = (i * 7919) & 0xff;
    globalThis.gc?.();
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sample = (): void => {
      peak = Math.max(peak, process.memoryUsage().rss);
    };
    const sampler = setInterval(sample, 10);
    try {
      const hashIn = createHash("sha256");
      async function* generate(): AsyncGenerator<Buffer> {
        for (let n = 0; n < total / chunk; n++) {
          const part = Buffer.from(template);
          part.writeUInt32BE(n, 0);
          hashIn.update(part);
          sample();
          yield part;
        }
      }
      const stored = await blobs.put(Readable.from(generate()), { size: total });
      assert.equal(stored.size, total);
      assert.equal(stored.hash, `sha256:${hashIn.digest("hex")}`);
      const putPeak = peak - baseline;

      const hashOut = createHash("sha256");
      let received = 0;
      const sink = new Writable({
        write(data: Buffer, _encoding, done) {
          hashOut.update(data);
          received += data.length;
          sample();
          done();
        },
      });
      await blobs.getTo(stored.hash, sink);
      assert.equal(received, total);
      assert.equal(`sha256:${hashOut.digest("hex")}`, stored.hash);
      const growth = peak - baseline;
      const mib = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MiB`;
      console.log(`# 256 MiB blob: RSS grew by at most ${mib(putPeak)} during put, ${mib(growth)} overall`);
      assert.ok(growth < 64 * 1024 * 1024, `RSS grew by ${mib(growth)} while streaming 256 MiB`);
    } finally {
      clearInterval(sampler);
    }
  });
});
