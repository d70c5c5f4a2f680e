// The taskhost console: a client of the HTTP API and its event stream,
// nothing more. Every value from the server is put into the page as text
// (never as HTML): task inputs, outputs and logs are other people's data.
"use strict";

const TOKEN_KEY = "taskhost-token";
const STATES = ["pending", "running", "retrying", "completed", "failed", "cancelled"];
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const main = document.getElementById("main");

// ---- small helpers ---------------------------------------------------

/** An element with attributes (on* are listeners) and children (text or nodes). */
function h(tag, attrs, ...children) {
  // `svg:NAME` makes an SVG element (an `svg:a` is a link inside a drawing).
  const el = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function stateBadge(state) {
  return h("span", { class: `state ${state}` }, state);
}

function when(text) {
  if (!text) return "–";
  const d = new Date(text);
  return isNaN(d) ? text : d.toLocaleString();
}

function ago(text) {
  if (!text) return "–";
  const s = Math.round((Date.now() - new Date(text)) / 1000);
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

/** Base64 bytes as text when they are UTF-8, else as base64 (said so). */
function decodeBase64(text) {
  return shownBytes(Uint8Array.from(atob(text), (c) => c.charCodeAt(0)));
}

/** Bytes as text when they are UTF-8, else as base64 (said so); at most
 *  64 KiB of them. */
function shownBytes(raw) {
  const cap = 64 * 1024;
  const more = raw.length > cap ? `\n… ${raw.length - cap} more bytes` : "";
  const head = raw.subarray(0, cap);
  try { return new TextDecoder("utf-8", { fatal: true }).decode(head) + more; } catch (_) {
    let text = "";
    for (const b of head) text += String.fromCharCode(b);
    return `(${raw.length} bytes, base64) ${btoa(text)}${more}`;
  }
}

function toast(message, bad) {
  const box = h("div", { class: bad ? "bad" : "" }, message);
  document.getElementById("toast").append(box);
  setTimeout(() => box.remove(), bad ? 8000 : 3500);
}

function taskLink(id) {
  return h("a", { href: `#/task/${id}`, class: "mono" }, id);
}

// ---- the API ---------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

async function call(method, path, body, raw) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    showLogin("The server refused the token (401): give another.");
    throw new ApiError(401, "unauthorized", "the token was refused");
  }
  if (!response.ok) {
    let code = `http_${response.status}`;
    let message = response.statusText;
    try {
      const error = (await response.json()).error;
      code = error.code;
      message = error.message;
    } catch (_) { /* not the API's error body */ }
    throw new ApiError(response.status, code, message);
  }
  if (raw) return response;
  return response.json();
}

const api = {
  get: (path) => call("GET", path),
  post: (path, body) => call("POST", path, body === undefined ? {} : body),
  put: (path, body) => call("PUT", path, body),
  text: async (path) => (await call("GET", path, undefined, true)).text(),
  bytes: async (path) => new Uint8Array(await (await call("GET", path, undefined, true)).arrayBuffer()),
};

/** `/healthz`: its body either way (503 while the store cannot write). */
async function health() {
  const response = await fetch("/healthz");
  return response.json();
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// ---- the event stream ------------------------------------------------

/** Listeners of the current page, told of every task event. */
let eventListeners = [];
let stream = null;

function onEvent(listener) {
  eventListeners.push(listener);
}

/** Reads `/v1/events` (Server-Sent Events, with the token, so through
 *  fetch), reconnecting with `Last-Event-ID` after a drop. */
async function connectEvents() {
  if (stream || !token()) return;
  const live = document.getElementById("live");
  const controller = new AbortController();
  stream = controller;
  let last = null;
  while (stream === controller) {
    try {
      const headers = { Authorization: `Bearer ${token()}` };
      if (last) headers["Last-Event-ID"] = last;
      const response = await fetch("/v1/events", { headers, signal: controller.signal });
      if (!response.ok) throw new Error(`events: ${response.status}`);
      live.textContent = "live";
      live.classList.add("on");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let data = "";
          let kind = "message";
          for (const line of block.split("\n")) {
            if (line.startsWith("data:")) data += line.slice(5).trim();
            else if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("id:")) last = line.slice(3).trim();
          }
          if (!data) continue;
          let event;
          try { event = JSON.parse(data); } catch (_) { continue; }
          for (const listener of eventListeners) listener(event, kind);
        }
      }
    } catch (error) {
      if (stream !== controller) return;
    }
    live.textContent = "offline";
    live.classList.remove("on");
    await new Promise((r) => setTimeout(r, 3000));
  }
}

function disconnectEvents() {
  if (stream) stream.abort();
  stream = null;
}

// ---- pages -----------------------------------------------------------

/** What the current page started (timers), stopped when it is left. */
let timers = [];

/** Bumped by every route. */
let routeNumber = 0;

/** A fresh container for the page being shown. Each page writes into its
 *  own: one the user left while it loaded writes into a container no
 *  longer on the screen. */
function pageRoot() {
  const view = h("div");
  main.replaceChildren(view);
  return view;
}

function every(ms, work) {
  timers.push(setInterval(work, ms));
}

/** Runs `work` at most once per `ms` however often it is asked for. */
function throttled(ms, work) {
  let pending = null;
  return () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; work(); }, ms);
    timers.push(pending);
  };
}

function showLogin(reason) {
  disconnectEvents();
  main.replaceChildren(
    h("form", {
      class: "login panel",
      onsubmit: (e) => {
        e.preventDefault();
        localStorage.setItem(TOKEN_KEY, e.target.elements.token.value.trim());
        connectEvents();
        route();
      },
    },
    h("h1", {}, "Sign in"),
    h("p", { class: reason ? "error" : "muted" }, reason || "The console acts with an API token (the server's admin token is in DATA/admin.token)."),
    h("label", {}, "API token", h("input", { name: "token", type: "password", autocomplete: "off", required: true, autofocus: true })),
    h("p", {}, h("button", { type: "submit" }, "Sign in"))),
  );
  main.querySelector("input").focus();
}

async function overview() {
  const main = pageRoot();
  const cards = h("div", { class: "cards" });
  const rate = h("canvas", { width: 600, height: 140, "aria-label": "Tasks ended per second" });
  const latency = h("canvas", { width: 600, height: 140, "aria-label": "Mean queue wait and run time" });
  const rateNow = h("span", { class: "muted" });
  const latencyNow = h("span", { class: "muted" });
  const queues = h("tbody");
  const running = h("tbody");
  const recent = h("tbody");
  main.replaceChildren(
    h("h1", {}, "Overview"),
    cards,
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", {}, "Tasks ended per second ", rateNow), rate),
      h("section", { class: "panel" }, h("h2", {}, "Latency: queue wait + run (ms) ", latencyNow), latency)),
    h("div", { class: "grid" },
      h("section", { class: "panel scroll" }, h("h2", {}, "Queues"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Queue"), h("th", { class: "num" }, "Ready"),
          h("th", { class: "num" }, "Delayed"), h("th", { class: "num" }, "Running"), h("th", { class: "num" }, "Weight"))), queues)),
      h("section", { class: "panel scroll" }, h("h2", {}, "Running now"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", {}, "Plugin"), h("th", {}, "Started"))), running))),
    h("section", { class: "panel scroll" }, h("h2", {}, "Latest transitions"),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "At"), h("th", {}, "Task"), h("th", {}, "Queue"), h("th", {}, "Plugin"), h("th", {}, "Move"))), recent)),
  );
  let samples = [];
  // The host's execution slots, from the latest sample; they need the
  // metrics scope, and without it the card counts the running tasks of
  // this token's queues.
  let slots = null;
  async function refresh() {
    const [healthz, list, run] = await Promise.all([
      health(), api.get("/v1/queues"), api.get("/v1/tasks?state=running&order=newest&limit=15"),
    ]);
    const mine = list.queues.reduce((n, q) => n + q.running, 0);
    const workers = slots
      ? h("div", { class: "card", title: "execution slots running an attempt now, of the host's --concurrency" },
        h("b", { id: "workers" }, `${slots.busy} / ${slots.workers}`), "workers busy")
      : h("div", { class: "card", title: "tasks of your queues running now" }, h("b", { id: "workers" }, mine), "running");
    cards.replaceChildren(
      ...STATES.map((s) => h("div", { class: "card", title: "tasks in the whole host" }, h("b", { "data-state": s }, healthz.tasks?.[s] ?? 0), stateBadge(s))),
      workers,
      healthz.status === "ok" ? "" : h("div", { class: "card error", id: "unhealthy" }, h("b", {}, "unhealthy"), healthz.reason || ""),
    );
    queues.replaceChildren(...list.queues.map((q) => h("tr", {},
      h("td", {}, h("a", { href: `#/tasks?queue=${encodeURIComponent(q.name)}` }, q.name)),
      h("td", { class: "num" }, q.ready), h("td", { class: "num" }, q.delayed),
      h("td", { class: "num" }, q.running), h("td", { class: "num" }, q.weight))));
    if (!list.queues.length) queues.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no queues yet")));
    running.replaceChildren(...run.tasks.map((t) => h("tr", {},
      h("td", {}, taskLink(t.id)), h("td", {}, `${t.plugin}@${t.plugin_version}`), h("td", {}, ago(t.started_at)))));
    if (!run.tasks.length) running.append(h("tr", {}, h("td", { colspan: 3, class: "muted" }, "nothing is running")));
  }
  /** The host's running totals of the last 10 minutes (sampled every
   *  2 s by the server), charted as rates and mean latencies. */
  async function sample() {
    let stats;
    try { stats = await api.get("/v1/stats/recent"); } catch (error) {
      rateNow.textContent = error.status === 403 ? "(needs a token with the metrics scope)" : "";
      slots = null;
      return;
    }
    slots = { busy: stats.busy, workers: stats.workers };
    samples = stats.samples;
    const rates = [];
    const lat = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i];
      const dt = Math.max((b.at_ms - a.at_ms) / 1000, 0.001);
      rates.push(Math.max(0, (b.ended - a.ended) / dt));
      const wait = b.queue_waits > a.queue_waits ? (b.queue_wait_us - a.queue_wait_us) / (b.queue_waits - a.queue_waits) : 0;
      const run = b.runs > a.runs ? (b.run_us - a.run_us) / (b.runs - a.runs) : 0;
      lat.push((wait + run) / 1000);
    }
    chart(rate, rates, "#2458c6");
    chart(latency, lat, "#c77d00");
    rateNow.textContent = rates.length ? `now ${rates[rates.length - 1].toFixed(1)}/s` : "";
    latencyNow.textContent = lat.length ? `now ${lat[lat.length - 1].toFixed(1)} ms` : "";
  }
  onEvent((e, kind) => {
    if (kind !== "task") return;
    recent.prepend(h("tr", {}, h("td", {}, new Date(e.at).toLocaleTimeString()), h("td", {}, taskLink(e.id)),
      h("td", {}, e.queue), h("td", {}, e.plugin), h("td", {}, `${e.from || "new"} → `, stateBadge(e.to))));
    while (recent.children.length > 15) recent.lastChild.remove();
  });
  await sample();
  await refresh();
  every(2000, () => refresh().catch(() => {}));
  every(2000, () => sample().catch(() => {}));
}

/** Prometheus text: sums of a metric's samples over every label set. */
function parseMetrics(text) {
  const rows = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (match) rows.push({ name: match[1], labels: match[2] || "", value: Number(match[3]) });
  }
  return {
    rows,
    sum: (name) => rows.filter((r) => r.name === name).reduce((n, r) => n + (isFinite(r.value) ? r.value : 0), 0),
  };
}

/** A line chart of `values` (oldest first) on `canvas`. */
function chart(canvas, values, colour) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const max = Math.max(1, ...values) * 1.1;
  ctx.strokeStyle = "#deded8";
  ctx.fillStyle = "#6b6b66";
  ctx.font = "11px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = height - 16 - f * (height - 24);
    ctx.beginPath(); ctx.moveTo(36, y); ctx.lineTo(width, y); ctx.stroke();
    ctx.fillText((max * f).toFixed(max < 10 ? 1 : 0), 0, y + 4);
  }
  ctx.fillText("last 10 minutes", width - 86, height - 2);
  if (values.length < 2) return;
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2;
  ctx.beginPath();
  values.forEach((v, i) => {
    // The newest at the right edge; 300 intervals of 2 s across.
    const x = 36 + ((300 - (values.length - 1 - i)) / 300) * (width - 36);
    const y = height - 16 - (v / max) * (height - 24);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

async function tasksPage(params) {
  const main = pageRoot();
  const query = new URLSearchParams({ order: "newest", count: "true", limit: "50" });
  for (const key of ["state", "queue", "plugin", "cursor"]) if (params.get(key)) query.set(key, params.get(key));
  const page = await api.get(`/v1/tasks?${query}`);
  const selected = new Set();
  const retrySelected = h("button", { type: "button", disabled: true, onclick: () => retryAll([...selected]) }, "Retry selected");
  const failed = page.tasks.filter((t) => t.state === "failed").map((t) => t.id);
  async function retryAll(ids) {
    let ok = 0;
    for (const id of ids) {
      try { await api.post(`/v1/tasks/${id}/retry`); ok++; } catch (error) { toast(`${id}: ${error.message}`, true); }
    }
    toast(`${ok} of ${ids.length} re-submitted`);
    route();
  }
  const filters = h("form", {
    class: "filters",
    onsubmit: (e) => {
      e.preventDefault();
      const form = new FormData(e.target);
      const go = form.get("go").trim();
      if (/^[0-9a-f-]{36}$/i.test(go)) { location.hash = `#/task/${go}`; return; }
      const next = new URLSearchParams();
      for (const key of ["state", "queue", "plugin"]) if (form.get(key)) next.set(key, form.get(key));
      location.hash = `#/tasks?${next}`;
    },
  },
  h("label", {}, "State", h("select", { name: "state" }, h("option", { value: "" }, "any"),
    ...STATES.map((s) => h("option", { value: s, selected: params.get("state") === s }, s)))),
  h("label", {}, "Queue", h("input", { name: "queue", value: params.get("queue") || "", size: 12 })),
  h("label", {}, "Plugin", h("input", { name: "plugin", value: params.get("plugin") || "", size: 12 })),
  h("label", {}, "Task id", h("input", { name: "go", placeholder: "go to a task (/)", size: 38, id: "go" })),
  h("button", { type: "submit" }, "Filter"));
  const rows = page.tasks.map((t) => {
    const box = t.state === "failed" ? h("input", { type: "checkbox", "aria-label": `select ${t.id}`, onchange: (e) => {
      if (e.target.checked) selected.add(t.id); else selected.delete(t.id);
      retrySelected.disabled = selected.size === 0;
    } }) : "";
    return h("tr", {}, h("td", {}, box), h("td", {}, taskLink(t.id)), h("td", {}, stateBadge(t.state)),
      h("td", {}, t.queue), h("td", {}, `${t.plugin}@${t.plugin_version}`), h("td", { class: "num" }, t.priority),
      h("td", { class: "num" }, `${t.attempts}/${t.max_attempts}`), h("td", { title: when(t.created_at) }, ago(t.created_at)),
      h("td", { class: "error" }, t.error ? `${t.error.class}: ${t.error.message}`.slice(0, 80) : ""));
  });
  const paging = h("p", { class: "toolbar" });
  if (params.get("cursor")) {
    const first = new URLSearchParams(params); first.delete("cursor");
    paging.append(h("a", { href: `#/tasks?${first}` }, "« Newest"));
  }
  if (page.next_cursor) {
    const next = new URLSearchParams(params); next.set("cursor", page.next_cursor);
    const more = page.more >= 10000 ? "10000+" : page.more;
    paging.append(h("span", { class: "muted" }, `${more} more`), h("a", { href: `#/tasks?${next}`, id: "next" }, "Next page »"));
  }
  main.replaceChildren(
    h("h1", {}, "Tasks"), filters,
    h("div", { class: "toolbar" }, retrySelected,
      failed.length ? h("button", { type: "button", class: "quiet", onclick: () => retryAll(failed) }, `Retry all ${failed.length} failed shown`) : ""),
    h("div", { class: "panel scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "Task"), h("th", {}, "State"), h("th", {}, "Queue"),
        h("th", {}, "Plugin"), h("th", { class: "num" }, "Pri"), h("th", { class: "num" }, "Attempts"),
        h("th", {}, "Submitted"), h("th", {}, "Error"))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "no tasks match"))))),
    paging);
}

async function taskPage(id) {
  const main = pageRoot();
  const [task, history] = await Promise.all([api.get(`/v1/tasks/${id}`), api.get(`/v1/tasks/${id}/history`)]);
  const input = await api.bytes(`/v1/tasks/${id}/input`).then(shownBytes, (e) => `(${e.message})`);
  const actions = h("div", { class: "toolbar" });
  if (!TERMINAL.has(task.state)) {
    actions.append(h("button", { type: "button", class: "danger", id: "cancel", onclick: async () => {
      try { await api.post(`/v1/tasks/${id}/cancel`); toast("cancelled"); } catch (e) { toast(e.message, true); }
      route();
    } }, "Cancel"));
  }
  if (task.state === "failed") {
    actions.append(h("button", { type: "button", id: "retry", onclick: async () => {
      try { await api.post(`/v1/tasks/${id}/retry`); toast("re-submitted"); } catch (e) { toast(e.message, true); }
      route();
    } }, "Retry"));
  }
  const field = (name, value) => [h("dt", {}, name), h("dd", {}, value ?? "–")];
  const output = "output" in task ? JSON.stringify(task.output, null, 2)
    : task.output_base64 !== undefined ? decodeBase64(task.output_base64) : null;
  const logs = h("div", { class: "log" });
  const attempts = h("div", { class: "toolbar" });
  async function showLogs(attempt) {
    const answer = await api.get(`/v1/tasks/${id}/logs${attempt ? `?attempt=${attempt}` : ""}`);
    attempts.replaceChildren(h("span", { class: "muted" }, "Attempt"),
      ...Array.from({ length: answer.attempts }, (_, i) => i + 1).map((n) =>
        h("button", { type: "button", class: n === answer.attempt ? "" : "quiet", onclick: () => showLogs(n) }, n)));
    const lines = answer.lines.map((l) => h("div", { class: l.stream }, h("span", { class: "at" }, new Date(l.at).toLocaleTimeString()),
      l.level ? `[${l.level}] ` : "", l.text));
    logs.replaceChildren(h("pre", {}, lines.length ? lines : h("span", { class: "muted" }, "no lines")));
    if (answer.dropped) logs.append(h("p", { class: "muted" }, `${JSON.stringify(answer.dropped)} dropped between the first and the latest lines`));
  }
  main.replaceChildren(
    h("h1", {}, "Task ", h("span", { class: "mono" }, id), " ", stateBadge(task.state)),
    actions,
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", {}, "Record"), h("dl", { class: "record" },
        field("Plugin", h("a", { href: `#/plugin/${encodeURIComponent(task.plugin)}` }, `${task.plugin}@${task.plugin_version}`)),
        field("Queue", task.queue), field("Priority", task.priority), field("Attempts", `${task.attempts} of ${task.max_attempts}`),
        field("Flow", h("a", { href: `#/flow/${task.flow_id}`, class: "mono" }, task.flow_id)),
        field("Parent", task.parent_id ? taskLink(task.parent_id) : null), field("Step", task.step),
        field("Submitted", when(task.created_at)), field("Started", when(task.started_at)),
        field("Finished", when(task.finished_at)), field("Runs at", task.next_run_at ? when(task.next_run_at) : null),
        field("Limits", `fuel ${task.limits.fuel}, memory ${bytes(task.limits.memory_bytes)}, timeout ${task.limits.timeout_ms} ms`),
        field("Fuel used", task.fuel_used), field("Key", task.idempotency_key), field("Callback", task.callback_url),
        field("Error", task.error ? h("span", { class: "error" }, `${task.error.class}: ${task.error.message}`) : null),
        task.error?.stderr_tail?.length
          ? field("Stderr", h("pre", { id: "stderr-tail", title: "the failed attempt's last stderr lines" }, task.error.stderr_tail.join("\n")))
          : null)),
      h("section", { class: "panel" }, h("h2", {}, "History"), h("ol", { class: "timeline" },
        history.history.map((t) => h("li", {}, h("span", { class: "muted" }, `${when(t.at)} · attempt ${t.attempt} · `),
          `${t.from || "new"} → `, stateBadge(t.to), h("div", { class: "muted" }, t.reason)))))),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", {}, `Input (${bytes(task.input_bytes)})`), h("pre", { id: "input" }, input)),
      h("section", { class: "panel" }, h("h2", {}, "Output"), h("pre", { id: "output" }, output ?? h("span", { class: "muted" }, "none yet")))),
    h("section", { class: "panel" }, h("h2", {}, "Logs"), attempts, logs),
  );
  await showLogs(null).catch((e) => logs.replaceChildren(h("p", { class: "error" }, e.message)));
  const again = throttled(400, () => route());
  // Told that events were missed: read the task again.
  onEvent((e, kind) => { if ((kind === "task" && e.id === id) || kind === "missed") again(); });
}

async function queuesPage() {
  const main = pageRoot();
  const list = await api.get("/v1/queues");
  const rows = list.queues.map((q) => {
    const weight = h("input", { type: "number", min: 1, max: 1000, value: q.weight, size: 5, "aria-label": `weight of ${q.name}` });
    const concurrency = h("input", { type: "number", min: 1, value: q.concurrency ?? "", placeholder: "none", size: 6, "aria-label": `concurrency of ${q.name}` });
    const keepFor = h("input", { value: q.retain_for ?? "", placeholder: "host's", size: 9, "aria-label": `retention of ${q.name}` });
    const keepCount = h("input", { type: "number", min: 1, value: q.retain_count ?? "", placeholder: "host's", size: 8, "aria-label": `kept count of ${q.name}` });
    const save = h("button", { type: "button", onclick: async () => {
      const body = { weight: Number(weight.value), concurrency: concurrency.value ? Number(concurrency.value) : null,
        retain_for: keepFor.value.trim() || null, retain_count: keepCount.value ? Number(keepCount.value) : null };
      try { await api.put(`/v1/queues/${encodeURIComponent(q.name)}`, body); toast(`${q.name} saved`); route(); }
      catch (e) { toast(e.message, true); }
    } }, "Save");
    return h("tr", {}, h("td", {}, h("a", { href: `#/tasks?queue=${encodeURIComponent(q.name)}` }, q.name)),
      h("td", { class: "num" }, q.ready), h("td", { class: "num" }, q.delayed), h("td", { class: "num" }, q.running),
      h("td", {}, weight), h("td", {}, concurrency), h("td", {}, keepFor), h("td", {}, keepCount), h("td", {}, save));
  });
  main.replaceChildren(h("h1", {}, "Queues"),
    h("p", { class: "muted" }, "Weight shares the workers between queues with work; concurrency caps a queue's running tasks; retention bounds the ended tasks it keeps."),
    h("div", { class: "panel scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Queue"), h("th", { class: "num" }, "Ready"), h("th", { class: "num" }, "Delayed"),
        h("th", { class: "num" }, "Running"), h("th", {}, "Weight"), h("th", {}, "Concurrency"), h("th", {}, "Keep for"),
        h("th", {}, "Keep count"), h("th", {}, ""))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "no queues yet"))))));
  every(3000, () => {
    // Depths only: the inputs keep what the user typed.
    api.get("/v1/queues").then((fresh) => {
      fresh.queues.forEach((q, i) => {
        const row = main.querySelectorAll("tbody tr")[i];
        if (!row || row.firstChild.textContent !== q.name) return;
        row.children[1].textContent = q.ready; row.children[2].textContent = q.delayed; row.children[3].textContent = q.running;
      });
    }).catch(() => {});
  });
}

async function flowsPage(params) {
  const main = pageRoot();
  const query = new URLSearchParams({ limit: "50" });
  for (const key of ["state", "cursor"]) if (params.get(key)) query.set(key, params.get(key));
  const page = await api.get(`/v1/flows?${query}`);
  const states = ["", "running", "completed", "failed", "cancelled"];
  const filter = h("select", { name: "state", "aria-label": "flow state", onchange: (e) => {
    const next = new URLSearchParams(); if (e.target.value) next.set("state", e.target.value);
    location.hash = `#/flows?${next}`;
  } }, states.map((s) => h("option", { value: s, selected: (params.get("state") || "") === s }, s || "any state")));
  const paging = h("p", { class: "toolbar" });
  if (params.get("cursor")) {
    const first = new URLSearchParams(params); first.delete("cursor");
    paging.append(h("a", { href: `#/flows?${first}` }, "« Newest"));
  }
  if (page.next_cursor) {
    const next = new URLSearchParams(params); next.set("cursor", page.next_cursor);
    paging.append(h("a", { href: `#/flows?${next}`, id: "next" }, "Next page »"));
  }
  main.replaceChildren(h("h1", {}, "Flows"),
    h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); location.hash = `#/flow/${e.target.elements.id.value.trim()}`; } },
      h("label", {}, "State ", filter),
      h("label", {}, "Flow id", h("input", { name: "id", size: 38, required: true })), h("button", { type: "submit" }, "Show")),
    h("div", { class: "panel scroll" }, h("h2", {}, "Flows, newest first"), h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Flow"), h("th", {}, "Name"), h("th", {}, "State"), h("th", {}, "First plugin"),
        h("th", { class: "num" }, "Tasks"), h("th", { class: "num" }, "Iteration"), h("th", {}, "Created"), h("th", {}, "Error"))),
      h("tbody", {}, page.flows.length ? page.flows.map((f) => h("tr", {},
        h("td", {}, h("a", { href: `#/flow/${f.id}`, class: "mono" }, f.id)), h("td", {}, f.name || ""),
        h("td", {}, stateBadge(f.state)), h("td", {}, f.plugin || ""), h("td", { class: "num" }, f.tasks),
        h("td", { class: "num" }, f.repeats ? f.iteration : ""), h("td", { title: when(f.created_at) }, ago(f.created_at)),
        h("td", { class: "error" }, (f.error || "").slice(0, 80))))
        : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "no flows"))))),
    paging);
}

/** A flow's tree as an SVG graph: one row per depth, edges to children
 *  (solid) and from each task a join waits for (dashed). */
function dag(tree) {
  const levels = [];
  const place = new Map();
  (function walk(nodes, depth) {
    for (const node of nodes) {
      levels[depth] = levels[depth] || [];
      place.set(node.id, { depth, index: levels[depth].length, node });
      levels[depth].push(node);
      walk(node.children || [], depth + 1);
    }
  })(tree, 0);
  const W = 150, H = 34, GX = 18, GY = 46;
  const widest = Math.max(1, ...levels.map((l) => l.length));
  const width = widest * (W + GX) + GX;
  const height = levels.length * (H + GY) + GY / 2;
  const at = (p) => ({ x: GX + p.index * (W + GX) + ((widest - levels[p.depth].length) * (W + GX)) / 2, y: GY / 2 + p.depth * (H + GY) });
  const svg = h("svg:svg", { class: "dag", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "The flow's tasks as a graph", height: Math.min(height, 640) });
  const colours = { pending: "#8a8a84", running: "#2458c6", retrying: "#c77d00", completed: "#1f8a4c", failed: "#c2362f", cancelled: "#6f4fa3" };
  for (const p of place.values()) {
    const to = at(p);
    for (const child of p.node.children || []) {
      const c = at(place.get(child.id));
      svg.append(h("svg:line", { x1: to.x + W / 2, y1: to.y + H, x2: c.x + W / 2, y2: c.y, stroke: "#b5b5ae" }));
    }
    for (const dep of p.node.after || []) {
      const d = place.get(dep);
      if (!d) continue;
      const from = at(d);
      svg.append(h("svg:line", { x1: from.x + W / 2, y1: from.y + H, x2: to.x + W / 2, y2: to.y, stroke: "#b5b5ae", "stroke-dasharray": "4 3" }));
    }
  }
  for (const p of place.values()) {
    const { x, y } = at(p);
    const n = p.node;
    const label = `${n.step || n.plugin}${n.iteration ? ` #${n.iteration}` : ""}`;
    svg.append(h("svg:a", { href: `#/task/${n.id}`, "data-state": n.state },
      h("svg:rect", { x, y, width: W, height: H, rx: 5, fill: colours[n.state] || "#888" }),
      h("svg:text", { x: x + 8, y: y + 14 }, label.slice(0, 22)),
      h("svg:text", { x: x + 8, y: y + 27 }, n.state),
      h("svg:title", {}, `${label}: ${n.state} (${n.id})`)));
  }
  return svg;
}

async function flowPage(id) {
  const main = pageRoot();
  const flow = await api.get(`/v1/flows/${id}`);
  const actions = h("div", { class: "toolbar" });
  if (flow.state === "running") {
    actions.append(h("button", { type: "button", class: "danger", onclick: async () => {
      try { await api.post(`/v1/flows/${id}/cancel`); toast("flow cancelled"); } catch (e) { toast(e.message, true); }
      route();
    } }, "Cancel flow"));
  }
  const counts = Object.entries(flow.tasks.by_state || {}).map(([s, n]) => [stateBadge(s), ` ${n} `]);
  main.replaceChildren(
    h("h1", {}, "Flow ", h("span", { class: "mono" }, id), " ", h("span", { class: `state ${flow.state === "running" ? "running" : flow.state}` }, flow.state)),
    actions,
    h("div", { class: "panel" }, h("dl", { class: "record" },
      h("dt", {}, "Name"), h("dd", {}, flow.name || "–"),
      h("dt", {}, "Tasks"), h("dd", {}, `${flow.tasks.total} `, counts),
      h("dt", {}, "Created"), h("dd", {}, when(flow.created_at)),
      h("dt", {}, "Finished"), h("dd", {}, when(flow.finished_at)),
      h("dt", {}, "Iteration"), h("dd", {}, flow.repeat ? `${flow.iteration}${flow.next_iteration_at ? `, next at ${when(flow.next_iteration_at)}` : ""}${flow.repeat.stop_requested ? " (stop requested)" : ""}` : "does not repeat"),
      h("dt", {}, "Error"), h("dd", { class: "error" }, flow.error || ""))),
    h("h2", {}, "Graph"),
    dag(flow.tree),
  );
  const again = throttled(400, () => route());
  onEvent((e, kind) => { if ((kind === "task" && e.flow_id === id) || kind === "missed") again(); });
}

async function pluginsPage() {
  const main = pageRoot();
  const list = await api.get("/v1/plugins");
  main.replaceChildren(h("h1", {}, "Plugins"), h("div", { class: "panel scroll" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Plugin"), h("th", {}, "Latest"), h("th", {}, "Versions"))),
    h("tbody", {}, list.plugins.length ? list.plugins.map((p) => h("tr", {},
      h("td", {}, h("a", { href: `#/plugin/${encodeURIComponent(p.name)}` }, p.name)), h("td", {}, p.latest || "–"),
      h("td", {}, p.versions.map((v) => `${v.version} (${v.state})`).join(", "))))
      : h("tr", {}, h("td", { colspan: 3, class: "muted" }, "no plugins yet"))))));
}

async function pluginPage(name) {
  const main = pageRoot();
  const plugin = await api.get(`/v1/plugins/${encodeURIComponent(name)}`);
  const rows = plugin.versions.map((d) => {
    const v = d; // the version's fields, flattened beside its counts
    const latest = plugin.latest === v.version;
    return h("tr", {}, h("td", {}, v.version, latest ? h("span", { class: "muted" }, " (latest)") : ""),
      h("td", {}, v.state, v.reason ? h("div", { class: "error" }, v.reason) : ""), h("td", {}, when(v.created_at)),
      h("td", { class: "num" }, bytes(v.size)),
      h("td", {}, Object.entries(d.tasks || {}).map(([s, n]) => [stateBadge(s), ` ${n} `])),
      h("td", {}, d.runs ? `${d.runs.runs} runs, slowest ${d.runs.run_ms_max.toFixed(1)} ms` : "–"),
      h("td", {}, latest || v.state !== "live" ? "" : h("button", { type: "button", class: "quiet", onclick: async () => {
        try { await api.put(`/v1/plugins/${encodeURIComponent(name)}/latest`, { version: v.version }); toast(`${name} now resolves to ${v.version}`); route(); }
        catch (e) { toast(e.message, true); }
      } }, "Make latest")));
  });
  main.replaceChildren(h("h1", {}, "Plugin ", name),
    h("div", { class: "panel scroll" }, h("h2", {}, "Versions"), h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Version"), h("th", {}, "State"), h("th", {}, "Added"), h("th", { class: "num" }, "Size"),
        h("th", {}, "Tasks"), h("th", {}, "Runs"), h("th", {}, ""))), h("tbody", {}, rows))),
    h("section", { class: "panel" }, h("h2", {}, "Manifest"), plugin.manifest ? h("pre", {}, plugin.manifest) : h("p", { class: "muted" }, "none: the host's defaults apply")),
    plugin.watch_error ? h("p", { class: "error" }, plugin.watch_error) : "");
}

async function modelsPage() {
  const main = pageRoot();
  let view;
  try { view = await api.get("/v1/models"); } catch (e) {
    main.replaceChildren(h("h1", {}, "Models"), h("p", { class: "muted" }, e.message));
    return;
  }
  let metrics = null;
  try { metrics = parseMetrics(await api.text("/metrics")); } catch (_) { /* no metrics scope */ }
  const batches = (model) => {
    if (!metrics) return "–";
    const buckets = metrics.rows.filter((r) => r.name === "taskhost_inference_batch_rows_bucket" && r.labels.includes(`model="${model}"`));
    let before = 0;
    const parts = [];
    for (const b of buckets) {
      const le = /le="([^"]+)"/.exec(b.labels)?.[1];
      if (b.value > before) parts.push(`≤${le}: ${b.value - before}`);
      before = b.value;
    }
    return parts.join(", ") || "no batches yet";
  };
  const wait = (model) => {
    if (!metrics) return "–";
    const pick = (name) => metrics.rows.filter((r) => r.name === name && r.labels.includes(`model="${model}"`)).reduce((n, r) => n + r.value, 0);
    const count = pick("taskhost_inference_queue_wait_seconds_count");
    return count ? `${((pick("taskhost_inference_queue_wait_seconds_sum") / count) * 1000).toFixed(2)} ms mean` : "–";
  };
  main.replaceChildren(h("h1", {}, "Models"),
    h("p", { class: view.runtime.available ? "muted" : "error" }, view.runtime.available ? `ONNX Runtime: ${view.runtime.library || "loaded"}` : `ONNX Runtime unavailable: ${view.runtime.error || "not configured"}`),
    h("div", { class: "panel scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", {}, "State"), h("th", {}, "Device"), h("th", { class: "num" }, "Queued"),
        h("th", {}, "Batch sizes"), h("th", {}, "Queue wait"))),
      h("tbody", {}, view.models.length ? view.models.map((m) => h("tr", {}, h("td", {}, m.name),
        h("td", {}, m.state, m.error ? h("div", { class: "error" }, m.error) : ""), h("td", {}, m.running_on || "–"),
        h("td", { class: "num" }, m.queued), h("td", {}, batches(m.name)), h("td", {}, wait(m.name))))
        : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no models"))))));
}

// ---- routing ---------------------------------------------------------

async function route() {
  for (const t of timers) { clearInterval(t); clearTimeout(t); }
  timers = [];
  eventListeners = [];
  const mine = ++routeNumber;
  if (!token()) { showLogin(); return; }
  connectEvents();
  const [path, search] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(search || "");
  const parts = (path || "/").split("/").filter(Boolean);
  const page = parts[0] || "overview";
  const current = { task: "tasks", flow: "flows", plugin: "plugins" }[page] || page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === current);
  let id = "";
  try { id = decodeURIComponent(parts[1] || ""); } catch (_) { id = "\u0000"; }
  if (["task", "flow"].includes(page) && !UUID.test(id)) {
    main.replaceChildren(h("h1", {}, "Not found"), h("p", { class: "error", id: "page-error" }, "That is not a task or flow id."));
    return;
  }
  const pages = {
    overview, tasks: () => tasksPage(params), task: () => taskPage(id), queues: queuesPage,
    flows: () => flowsPage(params), flow: () => flowPage(id), plugins: pluginsPage, plugin: () => pluginPage(id), models: modelsPage,
  };
  const render = pages[page];
  if (!render) { main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Overview"))); return; }
  document.title = `taskhost · ${current}`;
  try {
    await render();
  } catch (error) {
    if (error.status === 401 || mine !== routeNumber) return;
    main.replaceChildren(h("h1", {}, "Cannot show this page"), h("p", { class: "error", id: "page-error" }, error.message));
  }
  if (mine !== routeNumber) return;
}

document.getElementById("logout").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  disconnectEvents();
  route();
});
document.addEventListener("keydown", (e) => {
  if (e.key === "/" && !["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) {
    const go = document.getElementById("go");
    if (go) { e.preventDefault(); go.focus(); }
  }
});
window.addEventListener("hashchange", () => { route(); main.focus({ preventScroll: true }); });
route();
