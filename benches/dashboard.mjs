// @ts-check
// The dashboard's first render in headless Chromium.
//
// `cargo build --release --bins && node benches/dashboard.mjs` (after
// `npm ci` in tests/browser, whose playwright-core it uses). Against the
// real hearthd on a temp state directory holding a few hundred jobs, each
// round opens a new browser context (no cache, no cookie) at the URL
// `hearth dashboard` prints and measures until every section shows the
// daemon's data (`body[data-ready]`), and the browser's own first
// contentful paint. Beside it, in the same run and the same browser: a
// page from the same server with no script and no data (the 403 a request
// without the key gets), which is what loading anything at all costs.
//
// Knobs: HEARTH_BENCH_ROUNDS (15), HEARTH_BENCH_JOBS (300),
// HEARTH_BIN_DIR (target/release).

import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
process.env.HEARTH_BIN_DIR ??= join(here, "..", "target", "release");
const { Daemon, browser } = await import(join(here, "..", "tests", "browser", "harness.mjs"));

const rounds = Number(process.env.HEARTH_BENCH_ROUNDS ?? 15);
const jobs = Number(process.env.HEARTH_BENCH_JOBS ?? 300);

/** @param {number[]} xs */
function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const daemon = new Daemon();
await daemon.start();
const chromium = await browser();
try {
  for (let i = 0; i < jobs; i++) {
    daemon.hearth(["queue", "submit", "--queue", `q${i % 5}`, "--delay", "1d", "--", "true", String(i)]);
  }
  const url = daemon.dashboardUrl();
  const plain = daemon.info().endpoints.dashboard;
  /** @type {number[]} */ const ready = [];
  /** @type {number[]} */ const paint = [];
  /** @type {number[]} */ const baseline = [];
  for (let round = 0; round < rounds + 2; round++) {
    const context = await chromium.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await context.newPage();
    let t = performance.now();
    const refused = await page.goto(plain);
    if (refused?.status() !== 403) throw new Error(`the baseline page answered ${refused?.status()}`);
    const base = performance.now() - t;
    // The key's page moves on by itself; the clock runs from the request
    // for the dashboard itself, with the cookie set.
    await page.goto(url);
    await page.waitForURL(/\/dashboard\/$/);
    await page.goto("about:blank");
    t = performance.now();
    await page.goto(plain);
    await page.waitForSelector("body[data-ready=true]", { timeout: 30000 });
    const shown = performance.now() - t;
    const fcp = await page.evaluate(() => performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? NaN);
    await context.close();
    if (round >= 2) {
      baseline.push(base);
      ready.push(shown);
      paint.push(fcp);
    }
  }
  console.log(`hearth dashboard first render: ${jobs} jobs stored, ${rounds} rounds, a new context each`);
  console.log(`  ${"".padEnd(52)} ${"median".padStart(10)}`);
  console.log(`  ${"dashboard: every section shows the daemon's data".padEnd(52)} ${median(ready).toFixed(1).padStart(7)} ms`);
  console.log(`  ${"dashboard: first contentful paint".padEnd(52)} ${median(paint).toFixed(1).padStart(7)} ms`);
  console.log(`  ${"baseline: a page from the same server, no script".padEnd(52)} ${median(baseline).toFixed(1).padStart(7)} ms`);
} finally {
  await chromium.close();
  await daemon.stop();
}
