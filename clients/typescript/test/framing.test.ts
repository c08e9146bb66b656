import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { join } from "node:path";
import { test } from "node:test";

import { FrameDecoder, FrameTooLargeError, encodeFrame, encodeJsonFrame } from "../src/index.js";
import { TempState, within } from "./helpers.js";

test("a ping travels as the bytes framing.md shows", () => {
  assert.equal(
    encodeJsonFrame({ type: "ping" }).toString("hex"),
    "0000000f" + Buffer.from('{"type":"ping"}').toString("hex"),
  );
});

test("frames split across reads, one byte at a time, come out whole", () => {
  const payloads = [Buffer.from('{"type":"pong"}'), Buffer.alloc(0), Buffer.alloc(70_000, 7), Buffer.from("x")];
  const stream = Buffer.concat(payloads.map((p) => encodeFrame(p)));
  const decoder = new FrameDecoder();
  const out: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) out.push(...decoder.push(stream.subarray(i, i + 1)));
  assert.deepEqual(out, payloads);
  assert.equal(decoder.pendingBytes, 0);
});

test("several frames in one read, and a read that ends inside a header", () => {
  const payloads = Array.from({ length: 50 }, (_, i) => Buffer.from(JSON.stringify({ type: "n", i })));
  const stream = Buffer.concat(payloads.map((p) => encodeFrame(p)));
  const decoder = new FrameDecoder();
  const out = [...decoder.push(stream.subarray(0, stream.length - 2))];
  assert.equal(out.length, 49);
  out.push(...decoder.push(stream.subarray(stream.length - 2)));
  assert.deepEqual(out, payloads);
  // Cut at every position inside the third frame's header.
  for (let cut = 1; cut < 4; cut++) {
    const d = new FrameDecoder();
    const at = encodeFrame(payloads[0] as Buffer).length * 2 + cut;
    const got = [...d.push(stream.subarray(0, at)), ...d.push(stream.subarray(at))];
    assert.deepEqual(got, payloads);
  }
});

test("a length above the maximum is refused as soon as its header arrives", () => {
  const decoder = new FrameDecoder(1024);
  assert.deepEqual(decoder.push(Buffer.from([0, 0])), []);
  assert.throws(() => decoder.push(Buffer.from([4, 1])), (error: unknown) => {
    assert.ok(error instanceof FrameTooLargeError);
    assert.equal(error.length, 1025);
    return true;
  });
});

test("over a real socket, frames written in odd cuts decode whole", async () => {
  const state = new TempState();
  const path = join(state.dir, "framing.sock");
  const payloads = Array.from({ length: 200 }, (_, i) => Buffer.alloc((i * 977) % 5000, i % 251));
  const stream = Buffer.concat(payloads.map((p) => encodeFrame(p)));
  const server = createServer((socket: Socket) => {
    // Write in uneven slices so that reads cut frames anywhere.
    let at = 0;
    let step = 1;
    while (at < stream.length) {
      socket.write(stream.subarray(at, at + step));
      at += step;
      step = (step * 7 + 3) % 9000 + 1;
    }
    socket.end();
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  try {
    const { connect } = await import("node:net");
    const client = connect({ path });
    const decoder = new FrameDecoder();
    const out: Buffer[] = [];
    await within("the server's frames", 10_000, new Promise<void>((resolve, reject) => {
      client.on("data", (chunk: Buffer) => out.push(...decoder.push(chunk)));
      client.on("end", () => resolve());
      client.on("error", reject);
    }));
    assert.deepEqual(out, payloads);
  } finally {
    server.close();
    await state.cleanup();
  }
});
