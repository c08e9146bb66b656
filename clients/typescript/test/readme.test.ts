/**
 * The adoption examples of the top README ("From TypeScript") and of this
 * package's README, type-checked against the built package and run as
 * they are written, against a daemon each starts itself.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { PACKAGE_DIR, REPO_ROOT, TempState, hearthdBin } from "./helpers.js";

/** The first ```ts block after `heading` in `file`. */
function example(file: string, heading: string | undefined): string {
  const text = readFileSync(file, "utf8");
  const from = heading === undefined ? 0 : text.indexOf(`\n${heading}\n`);
  assert.ok(from >= 0, `${file} has no "${heading}" section`);
  const match = /```ts\n([\s\S]*?)```/.exec(text.slice(from));
  assert.ok(match, `no \`\`\`ts block in ${file} after ${heading ?? "its start"}`);
  return match[1] as string;
}

const dir = join(PACKAGE_DIR, "build", "readme");

function compile(name: string, code: string): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${name}.ts`), code);
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      extends: "../../tsconfig.json",
      compilerOptions: { rootDir: ".", outDir: "out", declaration: false, declarationMap: false },
      include: ["*.ts"],
    }),
  );
  const tsc = spawnSync(process.execPath, [join(PACKAGE_DIR, "node_modules", "typescript", "bin", "tsc"), "-p", dir], {
    encoding: "utf8",
    timeout: 120_000,
  });
  assert.equal(tsc.status, 0, `the example does not type-check:\n${tsc.stdout}${tsc.stderr}`);
  return join(dir, "out", `${name}.js`);
}

async function run(script: string): Promise<string> {
  const state = new TempState();
  try {
    const env: NodeJS.ProcessEnv = { ...process.env, HEARTH_STATE_DIR: state.stateDir, HEARTH_DAEMON_BIN: hearthdBin() };
    delete env.HEARTH_SOCKET;
    const result = spawnSync(process.execPath, [script], { cwd: PACKAGE_DIR, env, encoding: "utf8", timeout: 60_000 });
    assert.equal(result.status, 0, `the example failed (${String(result.signal ?? result.status)}):\n${result.stdout}${result.stderr}`);
    return result.stdout;
  } finally {
    // The example started a detached daemon: stop it.
    if (existsSync(join(state.stateDir, "daemon.json"))) {
      state.adopt((JSON.parse(readFileSync(join(state.stateDir, "daemon.json"), "utf8")) as { pid: number }).pid);
    }
    await state.cleanup();
  }
}

test("the top README's TypeScript example runs", { timeout: 180_000 }, async () => {
  const script = compile("top", example(join(REPO_ROOT, "README.md"), "## From TypeScript"));
  const out = await run(script);
  assert.match(out, /^hearthd \d+\.\d+\.\d+ \(pid \d+\)$/m);
  assert.match(out, /job \d+: succeeded/);
  assert.match(out, /hash: 'sha256:[0-9a-f]{64}'/);
});

test("the package README's events example runs", { timeout: 180_000 }, async () => {
  const script = compile("events", example(join(PACKAGE_DIR, "README.md"), "## Events"));
  const out = await run(script);
  assert.match(out, /#\d+ job (\d+): null -> queued\n#\d+ job \1: queued -> running\n#\d+ job \1: running -> succeeded\n/);
});

test("the package README's example runs", { timeout: 180_000 }, async () => {
  const script = compile("package", example(join(PACKAGE_DIR, "README.md"), undefined));
  const out = await run(script);
  assert.match(out, /hearthd \d+\.\d+\.\d+: healthy, \d+ connections/);
  assert.match(out, /working in \/.*\/pools\/scratch\//);
  assert.match(out, /started the daemon/);
});
