// @ts-check
// The hearth dashboard: sections fetched from ./api/<name>, refreshed when
// the daemon's events (./events, server-sent) say their service changed.
// Everything shown from the daemon goes through textContent, never HTML.

/** @typedef {Record<string, any>} Json */

/** How often a section may be fetched again while events stream in, in ms. */
const REFRESH_MS = 250;
/** The overview is also polled: uptime and connections change without events. */
const POLL_MS = 5000;
/** Events kept in the live list. */
const EVENTS_KEPT = 40;

/**
 * Each section: its title, how it is drawn, which services' events change it.
 * A new section is one entry here and one function (and one on the daemon's side).
 * @type {Record<string, {title: string, render: (data: Json) => Node, services: string[]}>}
 */
const SECTIONS = {
  overview: { title: "Health", render: renderOverview, services: ["status", "queue", "pool", "blob"] },
  queue: { title: "Queue", render: renderQueue, services: ["queue"] },
  pools: { title: "Pools", render: renderPools, services: ["pool"] },
  blobs: { title: "Blobs", render: renderBlobs, services: ["blob"] },
};

/** @type {string[]} */
let shown = [];
/** @type {Map<string, {timer: number | undefined, running: boolean, again: boolean}>} */
const refreshes = new Map();
/** @type {number | null} */
let openJob = null;
/** @type {Json[]} */
const events = [];

/**
 * Builds an element; strings become text nodes.
 * @param {string} tag
 * @param {Record<string, string>} [attrs]
 * @param {...(Node | string | null | undefined | false)} children
 * @returns {HTMLElement}
 */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return el;
}

/** @param {number} n */
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** @param {number | null | undefined} ms */
function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** @param {number | null | undefined} atMs */
function ago(atMs) {
  if (!atMs) return "–";
  return `${duration(Math.max(0, Date.now() - atMs))} ago`;
}

/**
 * @param {string[]} head
 * @param {Node[][]} rows
 * @param {string} empty
 */
function table(head, rows, empty) {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, ...head.map((t) => h("th", {}, t)))),
    h("tbody", {}, ...rows.map((cells) => h("tr", {}, ...cells.map((c) => h("td", {}, c))))));
}

/** @param {string} state */
function pill(state) {
  return h("span", { class: "pill", "data-state": state }, state.replace("_", " "));
}

/** @param {string} label @param {string | number} value */
function stat(label, value) {
  return h("div", { class: "stat" }, h("div", { class: "value" }, String(value)), h("div", { class: "label" }, label));
}

/** @param {Json} data */
function renderOverview(data) {
  const s = data.status;
  /** @type {HTMLElement} */ (document.getElementById("daemon")).textContent = `hearthd ${s.version} · pid ${s.pid} · up ${duration(s.uptime_ms)}`;
  const health = /** @type {HTMLElement} */ (document.getElementById("health"));
  health.textContent = s.health.state;
  health.dataset.state = s.health.state;
  const reasons = s.health.reasons.map((/** @type {Json} */ r) =>
    h("li", { "data-code": r.code }, pill(r.severity), " ", h("code", {}, r.code), " ", r.message));
  const c = s.connections;
  return h("div", {},
    h("div", { class: "stats" },
      stat("connections", c.active),
      stat("accepted", c.total),
      stat("refused", c.refused_busy + c.refused_peer),
      stat("channels", s.channels.join(" · "))),
    reasons.length ? h("ul", { class: "reasons" }, ...reasons) : h("p", { class: "muted" }, "Nothing is wrong."));
}

/** @param {Json} job */
function jobRow(job) {
  const link = h("a", { href: `#job-${job.id}`, "data-job": String(job.id) }, `#${job.id}`);
  link.addEventListener("click", (e) => { e.preventDefault(); showJob(job.id); });
  const row = [
    link,
    h("span", {}, job.queue),
    pill(job.state),
    h("code", { class: "argv" }, job.argv.join(" ")),
    h("span", {}, `${job.attempts}/${job.max_attempts}`),
    h("span", { class: "muted" }, ago(job.finished_at_ms ?? job.started_at_ms ?? job.created_at_ms)),
  ];
  return row;
}

/** @param {Json} data */
function renderQueue(data) {
  const st = data.stats;
  const counts = st.states;
  return h("div", {},
    h("div", { class: "stats" },
      ...["queued", "running", "retry_wait", "succeeded", "dead", "canceled"].map((k) => stat(k.replace("_", " "), counts[k])),
      stat("workers busy", `${st.busy_workers}/${st.workers}`),
      stat("oldest waiting", duration(st.oldest_queued_ms)),
      stat("finished, last min", st.finished_last_minute)),
    h("h3", {}, "Latest jobs"),
    table(["job", "queue", "state", "command", "attempts", "when"], data.jobs.map(jobRow), "No jobs yet."),
    h("h3", {}, "Dead-letter queue"),
    table(["job", "queue", "state", "command", "attempts", "when"], data.dead.map(jobRow), "No dead jobs."));
}

/** @param {Json} data */
function renderPools(data) {
  const rows = data.pools.pools.map((/** @type {Json} */ p) => [
    h("strong", {}, p.name),
    h("span", {}, `${p.ready}/${p.target}`),
    h("span", {}, String(p.building + p.checking + p.resetting)),
    h("span", {}, String(p.taken)),
    h("span", {}, p.warm_hit_rate === null || p.warm_hit_rate === undefined ? "–" : `${Math.round(p.warm_hit_rate * 100)} %`),
    h("span", {}, duration(p.mean_build_ms)),
    p.last_error ? h("span", { class: "error" }, p.last_error.message.split("\n")[0]) : h("span", { class: "muted" }, "–"),
  ]);
  return h("div", {},
    h("div", { class: "stats" },
      stat("builds running", `${data.pools.builds_running}/${data.pools.max_concurrent_builds}`),
      stat("leases", data.leases.length)),
    table(["pool", "ready/target", "building", "taken", "warm hits", "mean build", "last error"], rows, "No pools."));
}

/** @param {Json} data */
function renderBlobs(data) {
  const u = data.usage;
  const rows = data.blobs.map((/** @type {Json} */ b) => [
    h("code", { title: b.hash }, b.hash.slice(7, 19) + "…"),
    h("span", {}, bytes(b.size)),
    h("span", {}, b.name ?? "–"),
    h("span", { class: "muted" }, b.media_type ?? "–"),
    h("span", {}, b.pinned ? "pinned" : ""),
  ]);
  return h("div", {},
    h("div", { class: "stats" },
      stat("blobs", u.count),
      stat("stored", bytes(u.bytes)),
      stat("pinned", `${u.pinned_count} (${bytes(u.pinned_bytes)})`),
      stat("budget", u.budget_bytes === undefined ? "unlimited" : bytes(u.budget_bytes))),
    table(["hash", "size", "name", "type", ""], rows, "No blobs."),
    data.more ? h("p", { class: "muted" }, "… and more (the first ones in hash order are shown)") : null);
}

/** @param {Json} data a section the page does not know: shown as it came */
function renderRaw(data) {
  return h("pre", {}, JSON.stringify(data, null, 2));
}

/**
 * @param {string} path
 * @returns {Promise<Json>}
 */
async function api(path) {
  const r = await fetch(`api/${path}`, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 403) { sessionEnded(); throw new Error("forbidden"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ?? r.statusText);
  return body;
}

/** @param {string} name */
async function load(name) {
  const card = document.querySelector(`section[data-section="${name}"]`);
  if (!card) return;
  const body = /** @type {HTMLElement} */ (card.querySelector(".body"));
  try {
    const data = await api(name);
    const render = SECTIONS[name]?.render ?? renderRaw;
    body.replaceChildren(render(data));
    card.removeAttribute("data-error");
    card.setAttribute("data-loaded", String(Date.now()));
  } catch (e) {
    card.setAttribute("data-error", String(e));
    body.replaceChildren(h("p", { class: "error" }, `Cannot load: ${e instanceof Error ? e.message : e}`));
  }
}

/** Fetches a section soon: at most every REFRESH_MS, and once more if it changed meanwhile. @param {string} name */
function refresh(name) {
  let r = refreshes.get(name);
  if (!r) { r = { timer: undefined, running: false, again: false }; refreshes.set(name, r); }
  const state = r;
  if (state.running || state.timer !== undefined) { state.again = true; return; }
  state.timer = window.setTimeout(async () => {
    state.timer = undefined;
    state.running = true;
    state.again = false;
    await load(name);
    if (name === "queue" && openJob !== null) await loadJob(openJob);
    state.running = false;
    if (state.again) refresh(name);
  }, REFRESH_MS);
}

/** @param {number} id */
async function showJob(id) {
  openJob = id;
  await loadJob(id);
}

/** @param {number} id */
async function loadJob(id) {
  const aside = /** @type {HTMLElement} */ (document.getElementById("detail"));
  let data;
  try { data = await api(`job/${id}`); } catch (e) {
    aside.replaceChildren(h("p", { class: "error" }, `Cannot load job ${id}: ${e instanceof Error ? e.message : e}`));
    aside.hidden = false;
    return;
  }
  if (openJob !== id) return;
  const job = data.job;
  const close = h("button", { type: "button", class: "close" }, "close");
  close.addEventListener("click", () => { openJob = null; aside.hidden = true; });
  const attempts = data.attempts.map((/** @type {Json} */ a) => [
    h("span", {}, String(a.n)),
    a.outcome ? pill(a.outcome) : pill("running"),
    h("span", {}, a.exit_code ?? (a.signal ? `signal ${a.signal}` : "–")),
    h("span", {}, a.ended_at_ms ? duration(a.ended_at_ms - a.started_at_ms) : "running"),
    h("span", { class: "error" }, a.error ?? ""),
  ]);
  /** @param {string} name @param {Json} log */
  const logView = (name, log) => h("div", {},
    h("h4", {}, name, log.more_before ? h("span", { class: "muted" }, " (the end)") : null),
    log.text ? h("pre", { class: "log", "data-stream": name }, log.text) : h("p", { class: "muted" }, "empty"));
  aside.replaceChildren(
    h("div", { class: "detail-head" }, h("h2", {}, `Job #${job.id} `, pill(job.state)), close),
    h("p", {}, h("code", { class: "argv" }, job.argv.join(" "))),
    h("p", { class: "muted" }, `queue ${job.queue} · cwd ${job.cwd} · submitted ${ago(job.created_at_ms)}`),
    h("h3", {}, "Attempts"),
    table(["#", "outcome", "exit", "ran", "error"], attempts, "Not run yet."),
    logView("stdout", data.stdout),
    logView("stderr", data.stderr));
  aside.dataset.job = String(job.id);
  aside.dataset.state = job.state;
  aside.hidden = false;
}

/** @param {Json} ev */
function addEvent(ev) {
  if (events.some((e) => e.seq === ev.seq)) return;
  events.unshift(ev);
  events.length = Math.min(events.length, EVENTS_KEPT);
  const list = document.getElementById("events");
  if (!list) return;
  list.replaceChildren(...events.map(describeEvent));
}

/** @param {Json} ev */
function describeEvent(ev) {
  const when = new Date(ev.at_ms).toLocaleTimeString();
  let what;
  switch (ev.kind) {
    case "job_state": what = `job #${ev.id} (${ev.queue}): ${ev.from ?? "new"} → ${ev.to ?? "removed"}`; break;
    case "pool_build_started": what = `${ev.pool}: build started`; break;
    case "pool_build_ended": what = `${ev.pool}: build ${ev.ok ? "ready" : "failed"} in ${duration(ev.ms)}`; break;
    case "pool_take": what = `${ev.pool}: taken${ev.warm ? " (warm)" : ""}`; break;
    case "pool_release": what = `${ev.pool}: released`; break;
    case "blob_put": what = `blob ${ev.existed ? "put again" : "stored"}: ${bytes(ev.size)}`; break;
    case "blob_delete": what = `blob deleted: ${bytes(ev.size)}`; break;
    case "blob_gc": what = `collection removed ${ev.removed} blobs (${bytes(ev.bytes)})`; break;
    case "health_changed": what = `health: ${ev.from} → ${ev.to}`; break;
    default: what = `${ev.service}: ${ev.kind}`;
  }
  return h("li", { "data-seq": String(ev.seq), "data-kind": ev.kind }, h("span", { class: "muted" }, when), " ", what);
}

function sessionEnded() {
  const notice = /** @type {HTMLElement} */ (document.getElementById("notice"));
  notice.textContent = "This page's session has ended (the daemon restarted, or the key changed): run `hearth dashboard` to open it again.";
  notice.hidden = false;
}

/** @param {string} state */
function setLive(state) {
  const live = /** @type {HTMLElement} */ (document.getElementById("live"));
  live.dataset.state = state;
  live.textContent = state;
}

/** @param {boolean} first */
function follow(first) {
  // The first stream starts with the last events, for the list; a browser
  // reconnecting by itself resumes from the last one it saw.
  const source = new EventSource(first ? `events?recent=${EVENTS_KEPT}` : "events");
  source.addEventListener("open", () => {
    setLive("live");
    // Whatever happened while the stream was down.
    for (const name of shown) refresh(name);
  });
  source.addEventListener("message", (e) => {
    /** @type {Json} */
    const ev = JSON.parse(e.data);
    addEvent(ev);
    for (const name of shown) {
      if ((SECTIONS[name]?.services ?? []).includes(ev.service)) refresh(name);
    }
  });
  source.addEventListener("lagged", () => { for (const name of shown) refresh(name); });
  source.addEventListener("error", async () => {
    if (source.readyState === EventSource.CLOSED) {
      setLive("offline");
      // Refused (403 after a restart) or gone: say which, then try again later.
      try { await api("sections"); } catch { /* sessionEnded() said it */ }
      window.setTimeout(() => follow(false), 5000);
    } else {
      setLive("reconnecting");
    }
  });
}

async function main() {
  const { sections } = await api("sections");
  shown = sections;
  const main = /** @type {HTMLElement} */ (document.getElementById("sections"));
  for (const name of shown) {
    const title = SECTIONS[name]?.title ?? name;
    main.append(h("section", { "data-section": name, class: `card ${name}` }, h("h2", {}, title), h("div", { class: "body" }, h("p", { class: "muted" }, "loading…"))));
  }
  const list = h("section", { "data-section-live": "events", class: "card events" },
    h("h2", {}, "Events"), h("ol", { id: "events", class: "events" }, h("li", { class: "muted" }, "Waiting for events…")));
  main.insertBefore(list, main.children[1] ?? null);
  await Promise.all(shown.map(load));
  document.body.dataset.ready = "true";
  follow(true);
  window.setInterval(() => refresh("overview"), POLL_MS);
}

main().catch((e) => {
  const notice = /** @type {HTMLElement} */ (document.getElementById("notice"));
  if (notice.hidden) {
    notice.textContent = `The dashboard cannot start: ${e instanceof Error ? e.message : e}`;
    notice.hidden = false;
  }
});
