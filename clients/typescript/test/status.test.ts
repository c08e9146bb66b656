import assert from "node:assert/strict";
import { chownSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  Connection,
  ForeignDaemon,
  NotRunning,
  Refused,
  RequestError,
  StatusClient,
  Timeout,
  UnknownChannel,
} from "../src/index.js";
import { type Daemon, TempState, waitFor } from "./helpers.js";

describe("the status channel", () => {
  const state = new TempState();
  let daemon: Daemon;
  before(async () => {
    daemon = await state.start();
  });
  after(() => state.cleanup());

  test("ping, status and the handshake's daemon", async () => {
    const client = await StatusClient.connect({ ...state.options, clientName: "status-test/1.0" });
    try {
      assert.equal(client.daemon.pid, daemon.pid);
      assert.ok(client.maxFrame > 0);
      await client.ping();
      const report = await client.status();
      assert.equal(report.pid, daemon.pid);
      assert.equal(report.version, client.daemon.version);
      assert.equal(report.protocol, 1);
      assert.equal(report.state_dir, state.stateDir);
      assert.equal(report.socket, state.socket);
      assert.deepEqual([...report.channels].sort(), ["blob", "pool", "process", "queue", "status", "sync"]);
      assert.ok(["healthy", "degraded", "unhealthy"].includes(report.health.state));
      assert.equal(report.limits.max_frame, client.maxFrame);
      assert.ok(report.connections.active >= 1);
      assert.ok(report.services.queue !== undefined && report.services.blob !== undefined);
    } finally {
      client.close();
    }
  });

  test("calls made at once are answered in order on one connection", async () => {
    const client = await StatusClient.connect(state.options);
    try {
      const results = await Promise.all([client.ping(), client.status(), client.ping(), client.status()]);
      assert.equal(results[0], undefined);
      assert.equal(results[1].pid, daemon.pid);
      assert.equal(results[3].pid, daemon.pid);
    } finally {
      client.close();
    }
  });

  test("an unknown channel is refused with its code and the daemon's identity", async () => {
    await assert.rejects(Connection.open("jobs", state.options), (error: unknown) => {
      assert.ok(error instanceof Refused);
      assert.ok(error instanceof UnknownChannel);
      assert.equal(error.code, "unknown_channel");
      assert.equal(error.daemon?.pid, daemon.pid);
      assert.match(error.wireMessage, /jobs/);
      return true;
    });
  });

  test("an unknown request is a request error and the connection stays usable", async () => {
    const client = await StatusClient.connect(state.options);
    const exchange = await client["conn"].begin("reboot", undefined);
    try {
      await assert.rejects(exchange.request({ type: "reboot" }), (error: unknown) => {
        assert.ok(error instanceof RequestError);
        assert.equal(error.code, "unknown_request");
        assert.ok(error.connectionUsable);
        return true;
      });
    } finally {
      exchange.end();
    }
    await client.ping();
    client.close();
  });

  test("no daemon on the socket is NotRunning", async () => {
    const empty = new TempState();
    try {
      await assert.rejects(StatusClient.connect(empty.options), (error: unknown) => {
        assert.ok(error instanceof NotRunning);
        assert.equal(error.code, "not_running");
        return true;
      });
    } finally {
      await empty.cleanup();
    }
  });

  test("a socket that never answers the handshake times out", async () => {
    const silent = new TempState();
    const path = join(silent.dir, "silent.sock");
    const server = createServer(() => undefined);
    await new Promise<void>((resolve) => server.listen(path, resolve));
    try {
      await assert.rejects(StatusClient.connect({ socket: path, timeoutMs: 300 }), (error: unknown) => {
        assert.ok(error instanceof Timeout);
        assert.equal(error.code, "timeout");
        return true;
      });
    } finally {
      server.close();
      await silent.cleanup();
    }
  });

  test("a socket that belongs to another user is refused before anything is sent", { skip: process.geteuid?.() !== 0 && "needs root to give a socket away" }, async () => {
    const foreign = new TempState();
    const path = join(foreign.dir, "foreign.sock");
    let received = 0;
    const server = createServer((socket) => socket.on("data", (chunk: Buffer) => (received += chunk.length)));
    await new Promise<void>((resolve) => server.listen(path, resolve));
    chownSync(path, 65534, 65534);
    try {
      await assert.rejects(StatusClient.connect({ socket: path }), (error: unknown) => {
        assert.ok(error instanceof ForeignDaemon);
        assert.equal(error.code, "daemon_of_another_user");
        assert.equal(error.uid, 65534);
        return true;
      });
      assert.equal(received, 0);
    } finally {
      server.close();
      await foreign.cleanup();
    }
  });

  test("shutdown answers, then the daemon stops", async () => {
    const other = new TempState();
    const stopping = await other.start();
    try {
      const client = await StatusClient.connect(other.options);
      const answer = await client.shutdown({ reason: "test", drain: false });
      assert.ok(answer.grace_ms > 0);
      assert.equal(answer.drain_ms, undefined);
      client.close();
      await waitFor("the daemon to refuse connections after shutdown", 15_000, async () => {
        try {
          (await StatusClient.connect(other.options)).close();
          return false;
        } catch (error) {
          return error instanceof NotRunning;
        }
      });
      await stopping.kill("SIGTERM");
    } finally {
      await other.cleanup();
    }
  });
});
