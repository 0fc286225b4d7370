// The operator's view of the pool: polls the coordinator's admin API every second, no reload.
// The charts' history changes once a step (10 s), so it is read every few seconds only.
"use strict";

const TOKEN_KEY = "rma-admin-token";
const TIERS = { 1: "Tier 1 · GPU", 2: "Tier 2 · CPU", 3: "Tier 3 · storage", 4: "Tier 4 · edge" };
const HISTORY_EVERY_MS = 5000;
const NO_HISTORY = { services: {}, workers: {} };
let history = NO_HISTORY;
let historyAt = 0;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

class NeedsToken extends Error {}

async function get(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (response.status === 401 || response.status === 403) throw new NeedsToken((await response.json()).error);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function hardware(worker) {
  const caps = worker.capabilities;
  const parts = (caps.gpus || []).map((g) => `${g.name} ${Math.round(g.memory_mb / 1024)} GB`);
  if (caps.cpu_cores) parts.push(`${caps.cpu_cores} cores`);
  if (caps.ram_mb) parts.push(`${Math.round(caps.ram_mb / 1024)} GB RAM`);
  return parts.join(", ") || "not reported";
}

// A worker's place on the mesh, as `rma status --wide` says it: its groups, its tunnels, its lighthouse.
function meshLine(worker) {
  const mesh = worker.mesh;
  if (!mesh) return "";
  const parts = [`mesh ${(mesh.groups || []).join(",")}`];
  const tunnels = mesh.tunnels;
  if (tunnels) {
    parts.push(`${tunnels.direct} direct, ${tunnels.relayed} relayed`);
    if (tunnels.lighthouse_rtt_ms !== null) parts.push(`lighthouse ${tunnels.lighthouse_rtt_ms.toFixed(1)} ms`);
  }
  return parts.join(" · ");
}

function last(values) {
  const known = (values || []).filter((v) => v !== null);
  return known.length ? known[known.length - 1] : null;
}

function fmt(value) {
  return value >= 100 ? String(Math.round(value)) : String(Number(value.toPrecision(2)));
}

function chart(node, label) {
  return el("div", { class: `chart ${node.dataset.series}` }, node, el("div", { class: "figure" }, label));
}

function serviceCharts(series) {
  const s = series || { t: [], rps: [], errors: [], p50_ms: [], p95_ms: [], healthy: [] };
  const rps = last(s.rps);
  const errors = last(s.errors);
  const p50 = last(s.p50_ms);
  const p95 = last(s.p95_ms);
  const healthy = last(s.healthy);
  const traffic = el("span", {}, rps === null ? "– req/s" : `${fmt(rps)} req/s`);
  if (errors) traffic.append(el("div", { class: "errors" }, `${fmt(errors)} 5xx/s`));
  return el("div", { class: "charts" },
    chart(sparkline("rps", s.t, [{ values: s.rps, cls: "rps" }, { values: s.errors, cls: "errors" }], 1,
      "requests/s, and those answered 5xx"), traffic),
    chart(sparkline("latency", s.t, [{ values: s.p50_ms, cls: "p50" }, { values: s.p95_ms, cls: "p95" }], 1,
      "latency p50 and p95 (ms)"), p50 === null ? "p50 – ms" : `p50 ${fmt(p50)} · p95 ${fmt(p95)} ms`),
    chart(sparkline("healthy", s.t, [{ values: s.healthy, cls: "healthy" }], 1, "healthy replicas"),
      healthy === null ? "– healthy" : `${healthy} healthy`));
}

function renderServices(services, gaps) {
  const byName = Object.fromEntries(gaps.gaps.map((g) => [g.service, g]));
  const tiers = document.getElementById("tiers");
  tiers.replaceChildren();
  for (const tier of [1, 2, 3, 4]) {
    const column = el("div", { class: "tier" }, el("h3", {}, TIERS[tier]));
    for (const service of services.filter((s) => s.tier === tier)) {
      const gap = byName[service.name];
      const card = el("div", { class: "service", "data-service": service.name, "data-status": gap.status },
        el("span", { class: "name" }, service.name),
        el("span", { class: "count" }, `${gap.healthy_replicas} healthy / ${gap.current_workers} assigned`));
      if (gap.engines.length) card.append(el("div", { class: "engines" }, `engine: ${gap.engines.join(", ")}`));
      if (gap.reason) card.append(el("div", { class: "reason", title: gap.reason }, gap.short_reason));
      card.append(serviceCharts(history.services[service.name]));
      column.append(card);
    }
    tiers.append(column);
  }
}

function renderWorkers(workers) {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren();
  for (const w of workers.sort((a, b) => a.worker_id.localeCompare(b.worker_id))) {
    const services = el("td");
    for (const name of w.assigned_services) {
      const state = (w.services_status[name] || {}).state || "assigned";
      services.append(el("div", { class: `state-${state}` }, `${name}: ${state}`));
    }
    const past = history.workers[w.worker_id] || { t: [], cpu: [], ram: [], load: [] };
    const metrics = w.metrics || {};
    body.append(el("tr", { "data-worker": w.worker_id, "data-healthy": String(w.healthy) },
      el("td", {}, w.worker_id),
      el("td", {}, w.healthy ? w.worker_type : `${w.worker_type} (down)`, el("div", { class: "mesh" }, meshLine(w))),
      el("td", {}, hardware(w)), services,
      el("td", {}, chart(sparkline("cpu", past.t, [{ values: past.cpu, cls: "cpu" }], 100, "CPU %"),
        `${Math.round(metrics.cpu_percent || 0)} %`)),
      el("td", {}, chart(sparkline("ram", past.t, [{ values: past.ram, cls: "ram" }], 100, "RAM %"),
        `${Math.round(metrics.ram_percent || 0)} %`)),
      el("td", {}, chart(sparkline("load", past.t, [{ values: past.load, cls: "load" }], 1, "load"),
        w.current_load.toFixed(2))),
      el("td", {}, `${w.age_seconds.toFixed(1)} s ago`)));
  }
}

function renderEvents(events) {
  const list = document.getElementById("events");
  list.replaceChildren();
  for (const e of events.slice(0, 40)) {
    const when = new Date(e.at * 1000).toLocaleTimeString();
    list.append(el("li", {}, `${when} `, el("span", { class: "kind" }, e.kind), ` ${e.worker_id} ${e.detail}`));
  }
}

async function refresh() {
  try {
    const historyDue = Date.now() - historyAt >= HISTORY_EVERY_MS;
    const [workers, gaps, services, events, fresh] = await Promise.all([
      get("/api/admin/workers"), get("/api/admin/gaps"), get("/api/admin/services"), get("/api/admin/events"),
      historyDue ? get("/api/admin/history") : null,
    ]);
    if (fresh) {
      history = fresh;
      historyAt = Date.now();
    }
    document.getElementById("login").hidden = true;
    document.getElementById("pool").hidden = false;
    document.getElementById("summary").textContent =
      `${workers.healthy}/${workers.total} workers healthy · ${gaps.summary.covered}/${gaps.summary.total_services} ` +
      `services covered · ${gaps.summary.needs_attention} need attention`;
    renderServices(services.services, gaps);
    renderWorkers(workers.workers);
    renderEvents(events.events);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (error instanceof NeedsToken) {
      document.getElementById("pool").hidden = true;
      document.getElementById("login").hidden = false;
      document.getElementById("login-error").textContent = sessionStorage.getItem(TOKEN_KEY) ? error.message : "";
    } else {
      document.getElementById("updated").textContent = `coordinator unreachable: ${error.message}`;
    }
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  refresh();
});

refresh();
setInterval(refresh, 1000);
