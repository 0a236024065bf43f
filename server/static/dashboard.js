// Mission Control dashboard: one picture of the fleet from /api/state, then live from
// /api/events (Server-Sent Events). Everything is rendered with textContent: no value from
// the fleet (breaker reasons, agent ids) is ever parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 500;
let picture = null;
let receivedAt = 0;

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tableId, rows, render, empty) {
  const body = $(tableId).tBodies[0];
  const fragment = document.createDocumentFragment();
  for (const item of rows) {
    const tr = document.createElement("tr");
    render(tr, item);
    fragment.appendChild(tr);
  }
  if (!rows.length && empty) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(tr, empty, "muted");
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    fragment.appendChild(tr);
  }
  body.replaceChildren(fragment);
}

function percent(ratio) {
  return ratio === null || ratio === undefined ? "–" : `${(100 * ratio).toFixed(1)} %`;
}

function seconds(s) {
  if (!s || s <= 0) return "";
  return s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`;
}

function when(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "";
}

function rejections(a) {
  const gates = byType(a.rejected_by_reason);
  return a.rejected === undefined ? "" : gates ? `${a.rejected} (${gates})` : String(a.rejected);
}

function fallbacks(a) {
  return a.fallbacks_served === undefined ? "" : `${a.fallbacks_served} / ${a.fallbacks_failed}`;
}

function slowRule(rule) {
  if (!rule) return "-";
  const rate = Math.round(100 * (rule.rate_threshold ?? 0.5));
  return `${rate} % slower than ${rule.duration_threshold_secs ?? 1} s over ${rule.window_secs ?? 10} s`;
}

function byType(counts) {
  return Object.entries(counts || {}).map(([k, v]) => `${k} ${v}`).join(", ");
}

function openLeft(b) {
  const elapsed = (performance.now() - receivedAt) / 1000;
  return b.state === "OPEN" ? Math.max(0, b.open_remaining - elapsed) : 0;
}

function renderBreakers() {
  const filter = $("breaker-filter").value.trim().toLowerCase();
  const matching = picture.breakers.filter((b) => !filter || b.name.toLowerCase().includes(filter));
  // Not CLOSED first; past MAX_ROWS the filter narrows the list (a page of thousands of rows
  // would take seconds to draw on every update).
  matching.sort((a, b) => (a.state === "CLOSED") - (b.state === "CLOSED") || a.name.localeCompare(b.name));
  const rows = matching.slice(0, MAX_ROWS);
  $("breakers-more").textContent = matching.length > MAX_ROWS
    ? `${matching.length - MAX_ROWS} more breakers not shown: type in the filter to find one` : "";
  fill("breakers", rows, (tr, b) => {
    tr.dataset.breaker = b.name;
    cell(tr, b.name);
    cell(tr, b.state, `state ${b.state}`);
    cell(tr, b.consecutive_failures);
    cell(tr, seconds(openLeft(b)), "left");
    cell(tr, b.state === "HALF_OPEN" ? b.permits_out : "");
    cell(tr, when(b.changed_at));
    cell(tr, b.reason);
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "change…";
    button.addEventListener("click", () => {
      $("action-breaker").value = b.name;
      $("action-reason").focus();
    });
    tr.insertCell().appendChild(button);
  }, filter ? "no breaker matches" : "no breakers yet");
}

// Every agent of the fleet, with the replica it is connected to (this replica's first), then
// agents that reported here and are connected nowhere now: one row per agent, so an agent
// that moved to another replica is listed there only.
function renderAgents(p) {
  const rows = p.agents.map((a) => ({ link: a, activity: a.this_replica ? p.by_agent[a.id] : a }));
  const connected = new Set(p.agents.map((a) => a.id));
  for (const name of Object.keys(p.by_agent).sort()) {
    if (!connected.has(name)) rows.push({ link: null, activity: p.by_agent[name], name });
  }
  // Past MAX_ROWS the filter narrows the list (thousands of rows would take long to draw on
  // every update); the server lists at most a bounded number and says how many there are.
  const filter = $("agent-filter").value.trim().toLowerCase();
  const matching = filter
    ? rows.filter(({ link, name }) => (link ? `${link.id} ${link.replica}` : name).toLowerCase().includes(filter))
    : rows;
  const unlisted = filter ? 0 : Math.max(0, (p.agents_total ?? p.agents.length) - p.agents.length);
  const hidden = Math.max(0, matching.length - MAX_ROWS) + unlisted;
  $("agents-more").textContent = hidden
    ? `${hidden} more agents not shown: type in the filter to find one by agent or replica` : "";
  fill("agents", matching.slice(0, MAX_ROWS), (tr, { link, activity, name }) => {
    const a = activity || {};
    cell(tr, link ? (link.relay ? `${link.id} (replica link)` : link.id) : name);
    cell(tr, link ? `yes (${link.streams})` : "no");
    cell(tr, link ? (link.this_replica ? `${link.replica} (this replica)` : link.replica) : "", link && link.this_replica ? "this-replica" : "");
    cell(tr, a.calls); cell(tr, a.failures); cell(tr, rejections(a)); cell(tr, fallbacks(a));
    cell(tr, percent(a.recovery_rate));
  }, filter ? "no agent matches" : "");
}

function render() {
  const p = picture;
  const s = p.statistics;
  $("replica").textContent = `replica ${p.instance}` + (p.leading ? " (leader)" : p.leader ? ` — leader ${p.leader}` : "");
  $("store").textContent = p.store_ok ? "etcd reachable" : "etcd UNREACHABLE — serving from memory";
  $("store").className = `pill ${p.store_ok ? "good" : "bad"}`;
  $("not-closed").textContent = p.breakers.filter((b) => b.state !== "CLOSED").length;
  $("total-errors").textContent = s.total_errors;
  $("recovery-rate").textContent = Number(s.recovery_attempts) ? `${Number(s.recovery_success_rate).toFixed(1)} %` : "–";
  $("opens").textContent = s.circuit_breaker_opens;
  $("rejected").textContent = s.calls_rejected;
  const replicas = p.replicas || [];
  $("agents-connected").textContent = replicas.length ? replicas.reduce((n, r) => n + r.agents, 0) : s.connected_agents;
  $("replicas").textContent = replicas.map((r) => `${r.id}${r.this_replica ? " (this replica)" : ""}${r.leader ? " (leader)" : ""}: ${r.agents} agents`).join(" · ")
    + (p.roster_malformed ? ` · ${p.roster_malformed} malformed roster values ignored` : "");
  $("replicas").title = p.roster_problem || "";
  renderBreakers();
  fill("services", Object.entries(p.by_service), (tr, [name, a]) => {
    cell(tr, name); cell(tr, a.calls); cell(tr, a.failures); cell(tr, byType(a.errors_by_type));
    cell(tr, a.slow_calls); cell(tr, rejections(a)); cell(tr, fallbacks(a)); cell(tr, percent(a.recovery_rate));
  }, "no calls reported yet");
  renderAgents(p);
  fill("limits", s.fleet_limits || [], (tr, l) => {
    cell(tr, l.service); cell(tr, l.resource); cell(tr, Number(l.fleet_units).toFixed(1));
    cell(tr, Number(l.leased).toFixed(1)); cell(tr, Number(l.demanded).toFixed(1));
    cell(tr, Number(l.used).toFixed(1)); cell(tr, l.agents);
  }, "no fleet-wide limits: each agent enforces its own");
  fill("policies", p.policies, (tr, pol) => {
    cell(tr, pol.service); cell(tr, pol.timeout_secs !== undefined ? `${pol.timeout_secs} s` : "default");
    cell(tr, pol.max_retries ?? "default");
    cell(tr, `${pol.failure_threshold ?? "default"} / ${pol.success_threshold ?? "default"}`);
    cell(tr, pol.wait_duration_secs !== undefined ? `${pol.wait_duration_secs} s` : "default");
    cell(tr, pol.rate_limit_requests !== undefined ? `${pol.rate_limit_requests} / ${pol.rate_limit_window_secs ?? 60} s` : "default");
    cell(tr, slowRule(pol.slow_call));
  });
  fill("shadow", p.shadow || [], (tr, r) => {
    cell(tr, r.service); cell(tr, r.calls);
    cell(tr, byType(r.rejected_by_reason) || "0"); cell(tr, byType(r.shadow_rejected_by_reason) || "0");
    cell(tr, `${r.retries} / ${r.shadow_retries}`); cell(tr, r.breaker_state);
    cell(tr, `${r.shadow_breaker_state} (${r.shadow_breaker_opens} / ${r.shadow_breaker_closes})`);
  }, "no policy in shadow mode (mission-control policies shadow NAME FILE_OR_JSON)");
  const errors = $("config-errors");
  errors.replaceChildren(...(s.config_errors || []).map((e) => {
    const li = document.createElement("li");
    li.textContent = `refused ${e.key}: ${e.error} (the last good value stays)`;
    return li;
  }));
  const timeline = $("timeline");
  timeline.replaceChildren(...p.timeline.map((t) => {
    const li = document.createElement("li");
    li.textContent = `${when(t.at)}  ${t.breaker}: ${t.from || "new"} → ${t.to}${t.reason ? ` (${t.reason})` : ""}`;
    return li;
  }));
}

function accept(text) {
  picture = JSON.parse(text);
  receivedAt = performance.now();
  document.body.dataset.version = String((Number(document.body.dataset.version) || 0) + 1);
  render();
}

async function act(event) {
  event.preventDefault();
  const out = $("action-result");
  const name = $("action-breaker").value.trim();
  const token = $("action-token").value.trim();
  if (token) sessionStorage.setItem("mission-control-token", token);
  const headers = { "Content-Type": "application/json" };
  const saved = token || sessionStorage.getItem("mission-control-token");
  if (saved) headers.Authorization = `Bearer ${saved}`;
  const url = `/api/breakers/${encodeURIComponent(name)}/${$("action-kind").value}`;
  try {
    const reply = await fetch(url, { method: "POST", headers, body: JSON.stringify({ reason: $("action-reason").value }) });
    const body = await reply.json().catch(() => ({}));
    out.className = reply.ok ? "ok" : "bad";
    out.textContent = reply.ok ? `${name}: done` : `${name}: ${body.error || reply.statusText} (nothing changed)`;
  } catch (err) {
    out.className = "bad";
    out.textContent = `${name}: the control plane did not answer`;
  }
}

function follow() {
  const events = new EventSource("/api/events");
  events.addEventListener("state", (e) => accept(e.data));
  events.onopen = () => { $("live").textContent = "live"; $("live").className = "pill good"; };
  events.onerror = () => { $("live").textContent = "reconnecting…"; $("live").className = "pill bad"; };
}

document.addEventListener("DOMContentLoaded", async () => {
  $("action-form").addEventListener("submit", act);
  $("breaker-filter").addEventListener("input", () => picture && renderBreakers());
  $("agent-filter").addEventListener("input", () => picture && renderAgents(picture));
  const saved = sessionStorage.getItem("mission-control-token");
  if (saved) $("action-token").placeholder = "token saved for this tab";
  const first = await fetch("/api/state");
  accept(await first.text());
  follow();
  setInterval(() => {
    if (!picture) return;
    const open = new Map(picture.breakers.filter((b) => b.state === "OPEN").map((b) => [b.name, b]));
    if (!open.size) return;
    for (const tr of $("breakers").tBodies[0].rows) {
      const b = open.get(tr.dataset.breaker);
      if (b) tr.querySelector(".left").textContent = seconds(openLeft(b));
    }
  }, 250);
});
