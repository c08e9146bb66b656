// Replica mode of hearth's sync channel from Node, the way a web view uses
// it: one writer replica and 15 reader replicas (@automerge/automerge),
// each on its own connection. For each write: the time until every reader
// has it, and the sustained writes/s this gives. Beside it, the same loop
// with the 16 replicas syncing through an in-process Automerge hub (no
// socket, no disk): what Automerge itself costs.
//
//   node replica.mjs <socket> [writes]
import net from "node:net";
import * as A from "@automerge/automerge";

const socket = process.argv[2];
const WRITES = Number(process.argv[3] ?? 500);
const READERS = 15;

/** A framed connection: 4-byte big-endian length, then the payload. */
class Conn {
  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.onFrame = null;
    sock.on("data", (chunk) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      while (this.buf.length >= 4) {
        const len = this.buf.readUInt32BE(0);
        if (this.buf.length < 4 + len) break;
        const frame = this.buf.subarray(4, 4 + len);
        this.buf = this.buf.subarray(4 + len);
        this.onFrame(frame);
      }
    });
  }
  send(payload) {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(payload.length);
    this.sock.write(Buffer.concat([head, Buffer.from(payload)]));
  }
}

/** A replica joined to `doc`: applies the daemon's messages and answers them. */
function join(doc) {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ path: socket });
    const conn = new Conn(sock);
    const peer = { conn, doc: A.init(), state: A.initSyncState(), onChange: null };
    let stage = 0;
    conn.onFrame = (frame) => {
      if (frame[0] === 0x7b) {
        const msg = JSON.parse(frame.toString());
        if (stage === 0 && msg.ok) stage = 1;
        else if (stage === 1 && msg.type === "joined") {
          stage = 2;
          resolve(peer);
        } else if (msg.type === "error") reject(new Error(`${msg.code}: ${msg.message}`));
        return;
      }
      [peer.doc, peer.state] = A.receiveSyncMessage(peer.doc, peer.state, new Uint8Array(frame));
      pump(peer);
      if (peer.onChange) peer.onChange();
    };
    sock.on("error", reject);
    conn.send(JSON.stringify({ channel: "sync", protocol: 1, client: "node-replica-bench/1", doc, mode: "replica" }));
  });
}

function pump(peer) {
  const [state, msg] = A.generateSyncMessage(peer.doc, peer.state);
  peer.state = state;
  if (msg) peer.conn.send(msg);
}

function pct(samples) {
  const s = [...samples].sort((a, b) => a - b);
  return [s[Math.floor(s.length / 2)], s[Math.min(s.length - 1, Math.floor((s.length * 99) / 100))]];
}

function row(label, value) {
  console.log(`  ${label.padEnd(64)} ${value}`);
}

async function overHearth() {
  const doc = `node-bench/${process.pid}`;
  const writer = await join(doc);
  const readers = [];
  for (let r = 0; r < READERS; r++) readers.push(await join(doc));
  const latencies = [];
  const start = performance.now();
  for (let i = 0; i < WRITES; i++) {
    const t0 = performance.now();
    const arrived = Promise.all(
      readers.map(
        (reader) =>
          new Promise((done) => {
            const check = () => {
              if (reader.doc.n === i) {
                reader.onChange = null;
                done();
              }
            };
            reader.onChange = check;
            check();
          }),
      ),
    );
    writer.doc = A.change(writer.doc, (d) => {
      d.n = i;
    });
    pump(writer);
    await arrived;
    latencies.push(performance.now() - t0);
  }
  const seconds = (performance.now() - start) / 1000;
  for (const p of [writer, ...readers]) p.conn.sock.destroy();
  return { rate: WRITES / seconds, latencies };
}

/** The same loop through an in-process hub: Automerge's own cost. */
function inProcess() {
  const hub = { doc: A.init(), states: new Map() };
  const peers = [];
  for (let p = 0; p <= READERS; p++) {
    peers.push({ id: p, doc: A.init(), state: A.initSyncState() });
    hub.states.set(p, A.initSyncState());
  }
  const settle = () => {
    let moved = true;
    while (moved) {
      moved = false;
      for (const peer of peers) {
        let msg;
        [peer.state, msg] = A.generateSyncMessage(peer.doc, peer.state);
        if (msg) {
          moved = true;
          [hub.doc] = [A.receiveSyncMessage(hub.doc, hub.states.get(peer.id), msg)].map(([d, s]) => {
            hub.states.set(peer.id, s);
            return d;
          });
        }
        let back;
        let hs;
        [hs, back] = A.generateSyncMessage(hub.doc, hub.states.get(peer.id));
        hub.states.set(peer.id, hs);
        if (back) {
          moved = true;
          [peer.doc, peer.state] = A.receiveSyncMessage(peer.doc, peer.state, back);
        }
      }
    }
  };
  settle();
  const latencies = [];
  const start = performance.now();
  for (let i = 0; i < WRITES; i++) {
    const t0 = performance.now();
    peers[0].doc = A.change(peers[0].doc, (d) => {
      d.n = i;
    });
    settle();
    if (!peers.every((p) => p.doc.n === i)) throw new Error("in-process sync did not converge");
    latencies.push(performance.now() - t0);
  }
  return { rate: WRITES / ((performance.now() - start) / 1000), latencies };
}

const hearth = await overHearth();
const [h50, h99] = pct(hearth.latencies);
row("hearth: write to all 15 readers, p50 / p99", `${h50.toFixed(2)} ms / ${h99.toFixed(2)} ms`);
row("hearth: sustained writes/s (each reaching all 15 readers)", `${hearth.rate.toFixed(0)} writes/s`);
const base = inProcess();
const [b50, b99] = pct(base.latencies);
row("    baseline: in-process Automerge hub, no socket, p50 / p99", `${b50.toFixed(2)} ms / ${b99.toFixed(2)} ms`);
row("    baseline: in-process Automerge hub, writes/s", `${base.rate.toFixed(0)} writes/s`);
row("    runtimed (the predecessor), measured on this machine", "55 writes/s, p50 2.8-3.4 ms");
row("    target: 20x runtimed = 1,100 writes/s", hearth.rate >= 1100 ? "met" : "MISSED");
