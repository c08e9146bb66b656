import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import {
  BlobNotFound,
  ERROR_CODES,
  HearthError,
  Refused,
  RequestError,
  ShuttingDown,
  UnknownChannel,
  UnknownPool,
  VERSION,
  isKnownErrorCode,
  refusal,
  requestError,
} from "../src/index.js";
import { PACKAGE_DIR, REPO_ROOT } from "./helpers.js";

/** The rows of the table in proto-docs/errors.md: code → "closed" | "usable". */
function documentedCodes(): Map<string, string> {
  const text = readFileSync(join(REPO_ROOT, "proto-docs", "errors.md"), "utf8");
  const rows = new Map<string, string>();
  for (const line of text.split("\n")) {
    const cells = line.split("|").map((c) => c.trim());
    const code = /^`([a-z_]+)`$/.exec(cells[1] ?? "");
    // "closed after the first frame; else usable": a request's answer leaves it usable.
    const after = cells[3] ?? "";
    const connection = after.startsWith("usable") || after.includes("else usable") ? "usable" : after;
    if (code && (connection === "closed" || connection === "usable")) rows.set(code[1] as string, connection);
  }
  return rows;
}

test("every code in proto-docs/errors.md is in the table, with what it does to the connection", () => {
  const documented = documentedCodes();
  assert.ok(documented.size >= 30, `only ${documented.size} codes found in errors.md`);
  for (const [code, connection] of documented) {
    assert.ok(isKnownErrorCode(code), `${code} is documented but missing from ERROR_CODES`);
    assert.equal(ERROR_CODES[code].connection, connection, `${code}: the connection afterwards`);
  }
  for (const code of Object.keys(ERROR_CODES)) {
    assert.ok(documented.has(code), `${code} is in ERROR_CODES but not documented in errors.md`);
  }
});

test("every code has its own class, of the family of where the daemon sends it", () => {
  const names = new Set<string>();
  for (const [code, entry] of Object.entries(ERROR_CODES)) {
    const camel = code.replace(/(^|_)([a-z])/g, (_, __, c: string) => c.toUpperCase());
    // `StartFailed` is the launch failure of ensureDaemonRunning; the
    // process channel's `start_failed` takes its channel's name first.
    const expected = code === "start_failed" ? "ProcessStartFailed" : camel;
    assert.equal(entry.error.name, expected, `the class of ${code}`);
    assert.ok(!names.has(entry.error.name));
    names.add(entry.error.name);
    if (entry.sent !== "request") {
      const refused = refusal({ code, message: "m" });
      assert.ok(refused instanceof Refused && refused instanceof entry.error && refused.code === code, code);
    }
    if (entry.sent !== "handshake") {
      const failed = requestError({ code, message: "m" });
      assert.ok(failed instanceof RequestError && failed instanceof entry.error && failed.code === code, code);
      assert.equal(failed.connectionUsable, entry.connection === "usable", code);
    }
  }
  assert.ok(requestError({ code: "blob_not_found", message: "m" }) instanceof BlobNotFound);
  assert.ok(!(requestError({ code: "blob_not_found", message: "m" }) instanceof UnknownPool));
  assert.ok(refusal({ code: "unknown_channel", message: "m" }) instanceof UnknownChannel);
  assert.ok(refusal({ code: "shutting_down", message: "m" }) instanceof ShuttingDown);
  assert.ok(requestError({ code: "shutting_down", message: "m" }) instanceof ShuttingDown);
  // A code from a newer daemon is still a request error with its code.
  const newer = requestError({ code: "from_a_newer_daemon", message: "m" });
  assert.equal(newer.constructor, RequestError);
  assert.equal(newer.code, "from_a_newer_daemon");
});

test("a request error carries the daemon's code and message, and whether the connection lives on", () => {
  const error = requestError({ code: "unknown_pool", message: "no pool named \"x\"" });
  assert.ok(error instanceof HearthError);
  assert.equal(error.code, "unknown_pool");
  assert.equal(error.wireMessage, "no pool named \"x\"");
  assert.equal(error.name, "UnknownPool");
  assert.ok(error instanceof UnknownPool);
  assert.ok(error.connectionUsable);
  assert.ok(!new RequestError("idle_timeout", "idle").connectionUsable);
  assert.ok(new RequestError("from_a_newer_daemon", "?").connectionUsable);
});

test("the version constant is package.json's", () => {
  const pkg = JSON.parse(readFileSync(join(PACKAGE_DIR, "package.json"), "utf8")) as { version: string };
  assert.equal(VERSION, pkg.version);
});
