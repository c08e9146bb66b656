// @ts-check
// The dashboard in a real headless Chromium against the real hearthd: it is
// refused without the key, renders the daemon's data, and follows a job to
// its end through the event stream without a reload.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Daemon, SHOTS, browser, waitFor } from "./harness.mjs";

/** @type {Daemon} */
let daemon;
/** @type {import("playwright-core").Browser} */
let chromium;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  daemon = new Daemon();
  await daemon.start();
  chromium = await browser();
});

after(async () => {
  await chromium?.close();
  await daemon?.stop();
});

/**
 * A page that records what the browser complains about (CSP violations,
 * script errors, failed loads).
 */
async function newPage() {
  const context = await chromium.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  /** @type {string[]} */
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") problems.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  return { context, page, problems };
}

test("without the key the page is refused", async () => {
  const { context, page } = await newPage();
  const bare = daemon.info().endpoints.dashboard;
  const response = await page.goto(bare);
  assert.equal(response?.status(), 403);
  assert.match(await page.locator("body").innerText(), /hearth dashboard/);
  const wrong = await page.goto(`${bare}?token=${"0".repeat(64)}`);
  assert.equal(wrong?.status(), 403);
  const api = await page.goto(`${bare}api/queue`);
  assert.equal(api?.status(), 403);
  assert.deepEqual(await context.cookies(), [], "no cookie without the key");
  await context.close();
});

test("the page renders the daemon's data and follows a job to its end", async () => {
  daemon.hearth(["run", "--", "sh", "-c", "echo compiled 42 files; echo 'warning: slow disk' >&2"]);
  const gate = join(daemon.dir, "gate");
  const id = daemon.hearth(["queue", "submit", "--queue", "build", "--", "sh", "-c", `while [ ! -e '${gate}' ]; do sleep 0.05; done; echo finished`]).trim();
  daemon.hearth(["queue", "submit", "--queue", "nightly", "--max-attempts", "1", "--", "false"]);
  const blob = join(daemon.dir, "notes.txt");
  writeFileSync(blob, "release notes\n");
  daemon.hearth(["blob", "put", "--name", "notes.txt", blob]);

  const { context, page, problems } = await newPage();
  await page.goto(daemon.dashboardUrl());
  await page.waitForURL(/\/dashboard\/$/, { timeout: 10000 });
  const cookies = await context.cookies();
  assert.equal(cookies.length, 1);
  assert.equal(cookies[0].httpOnly, true);
  assert.equal(cookies[0].sameSite, "Strict");
  await page.waitForSelector("body[data-ready=true]", { timeout: 15000 });
  // Scripts cannot read the session.
  assert.equal(await page.evaluate(() => document.cookie), "");

  // Live data: health, the jobs, the dead-letter queue, pools, blobs.
  assert.equal(await page.locator("#health").innerText(), "healthy");
  assert.match(await page.locator("#daemon").innerText(), new RegExp(`pid ${daemon.info().pid}`));
  const job = page.locator(`section[data-section=queue] tr:has(a[data-job="${id}"])`).first();
  await job.waitFor();
  assert.match(await job.innerText(), /running/);
  const dead = page.locator("section[data-section=queue] table").nth(1);
  assert.match(await dead.innerText(), /false/);
  assert.match(await page.locator("section[data-section=pools]").innerText(), /venv/);
  assert.match(await page.locator("section[data-section=blobs]").innerText(), /notes\.txt/);
  await waitFor("the live stream to connect", async () => (await page.locator("#live").getAttribute("data-state")) === "live");

  // The job finishes: the page shows it without a reload, from the event stream.
  await page.evaluate(() => { /** @type {any} */ (window).stayed = true; });
  writeFileSync(gate, "");
  await job.locator(".pill[data-state=succeeded]").waitFor({ timeout: 15000 });
  await page.locator(`#events li[data-kind=job_state]`).first().waitFor();
  assert.match(await page.locator("#events").innerText(), new RegExp(`job #${id} \\(build\\): running → succeeded`));
  assert.equal(await page.evaluate(() => /** @type {any} */ (window).stayed), true, "no reload");
  await page.screenshot({ path: join(SHOTS, "dashboard.png") });

  // A job's detail: its attempts and the end of its logs.
  await page.locator(`a[data-job="1"]`).first().click();
  await page.locator("#detail[data-job='1'] pre[data-stream=stdout]").waitFor();
  assert.match(await page.locator("#detail pre[data-stream=stdout]").innerText(), /compiled 42 files/);
  assert.match(await page.locator("#detail pre[data-stream=stderr]").innerText(), /warning: slow disk/);
  await page.screenshot({ path: join(SHOTS, "dashboard-job.png") });

  assert.deepEqual(problems, [], "no CSP violation, script error or failed load");
  await context.close();
});

test("job output is shown as text, never as markup", async () => {
  daemon.hearth(["run", "--", "sh", "-c", "echo '<img src=x onerror=window.pwned=1><b>bold</b>'"]);
  const { context, page, problems } = await newPage();
  await page.goto(daemon.dashboardUrl());
  await page.waitForSelector("body[data-ready=true]", { timeout: 15000 });
  const last = await page.locator("section[data-section=queue] a[data-job]").first().getAttribute("data-job");
  await page.locator(`a[data-job="${last}"]`).first().click();
  const out = page.locator(`#detail[data-job="${last}"] pre[data-stream=stdout]`);
  await out.waitFor();
  assert.match(await out.innerText(), /<img src=x onerror=window\.pwned=1><b>bold<\/b>/);
  assert.equal(await page.evaluate(() => /** @type {any} */ (window).pwned), undefined);
  assert.equal(await page.locator("#detail b").count(), 0);
  assert.deepEqual(problems, []);
  await context.close();
});
