// amqp-agent dashboard. Every value from the agent is set with textContent (never innerHTML);
// the admin token lives in this tab's sessionStorage and goes out as an Authorization header.
"use strict";
(function () {
  const TOKEN = "amqp-agent.token";
  const REFRESH = "amqp-agent.autorefresh";
  const EVERY_MS = 5000;
  const $ = (sel) => document.querySelector(sel);
  const page = document.body.dataset.page;

  // --- The token: typed once per tab, never a cookie. ---
  const token = () => sessionStorage.getItem(TOKEN) || "";
  function showAuth() {
    const unlocked = token() !== "";
    const state = $("#auth-state");
    state.textContent = unlocked ? "actions unlocked" : "read-only";
    state.dataset.unlocked = String(unlocked);
    $("#lock").hidden = !unlocked;
    $("#token-form").hidden = unlocked;
    document.querySelectorAll("form.action button, .needs-token").forEach((b) => { b.disabled = !unlocked; });
    if (unlocked && typeof onUnlock === "function") onUnlock();
  }
  let onUnlock = null;
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#token");
    if (input.value !== "") sessionStorage.setItem(TOKEN, input.value);
    input.value = "";
    showAuth();
  });
  $("#lock").addEventListener("click", () => { sessionStorage.removeItem(TOKEN); showAuth(); });
  showAuth();

  // --- Auto-refresh toggle, kept for the tab. ---
  const toggle = $("#autorefresh");
  toggle.checked = sessionStorage.getItem(REFRESH) !== "off";
  toggle.addEventListener("change", () => {
    sessionStorage.setItem(REFRESH, toggle.checked ? "on" : "off");
  });
  function every(fn) {
    setInterval(() => { if (toggle.checked && !document.hidden) fn(); }, EVERY_MS);
  }

  async function getJson(path) {
    const r = await fetch(path, { cache: "no-store", credentials: "omit" });
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r.json();
  }

  const rowsBySubject = () => {
    const m = new Map();
    document.querySelectorAll("tr[data-subject]").forEach((tr) => m.set(tr.dataset.subject, tr));
    return m;
  };

  // --- Charts (uPlot). ---
  function width(el, fallback) { return Math.max(el.clientWidth || fallback, 60); }
  function sparkline(el, t, ys) {
    const opts = {
      width: width(el, 120), height: 28, legend: { show: false }, cursor: { show: false },
      select: { show: false }, axes: [{ show: false }, { show: false }],
      scales: { x: { time: true, range: xRange }, y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
      series: [{}, { stroke: "#2f5bd3", width: 1, fill: "rgba(47,91,211,0.12)", spanGaps: false }],
    };
    return new uPlot(opts, [t, ys], el);
  }
  function chart(el, t, series) {
    const colors = ["#2f5bd3", "#cf222e", "#1a7f37", "#9a6700"];
    const opts = {
      width: width(el, 420), height: 200,
      scales: { x: { time: true, range: xRange }, y: { range: (u, min, max) => [0, Math.max(max * 1.1, 1)] } },
      series: [{}].concat(series.map((s, i) => ({ label: s.label, stroke: colors[i % colors.length], width: 1.5, points: { size: 4 } }))),
    };
    return new uPlot(opts, [t].concat(series.map((s) => s.data)), el);
  }
  // The x axis spans at least 5 minutes, ending now: a young history is not stretched.
  const xRange = (u, min, max) => [Math.min(min, max - 300), max];
  const nulls = (ys) => ys.map((y) => (y === null || Number.isFinite(y) ? y : null));

  // --- Overview. ---
  const sparks = new Map();
  function drawSparks(history) {
    document.querySelectorAll(".sparkline[data-subject]").forEach((el) => {
      const s = history.subjects[el.dataset.subject];
      if (!s) return;
      const data = [history.t, nulls(s.rate)];
      const old = sparks.get(el);
      if (old) old.setData(data); else sparks.set(el, sparkline(el, history.t, data[1]));
    });
  }
  async function refreshOverview() {
    try {
      const data = await getJson("/dashboard/data.json");
      const rows = rowsBySubject();
      for (const [name, row] of Object.entries(data.subjects)) {
        const tr = rows.get(name);
        if (!tr) { location.reload(); return; }
        tr.dataset.state = row.state;
        tr.querySelectorAll("td[data-field]").forEach((td) => {
          const v = row.cells[td.dataset.field];
          if (v !== undefined && td.textContent !== v) td.textContent = v;
        });
      }
      const ready = $(".ready");
      ready.dataset.ready = String(data.ready);
      ready.textContent = data.ready ? "ready" : "not ready";
      drawSparks(data.history);
      $("#updated").textContent = "Updated " + new Date().toLocaleTimeString();
    } catch (e) {
      $("#updated").textContent = "Cannot reach the agent: " + e.message;
    }
  }

  // --- Metrics. ---
  const CHARTS = {
    throughput: (s) => [{ label: "msg/s", data: s.rate }],
    runtime: (s) => [{ label: "FPM ms", data: s.runtime_ms }],
    wait: (s) => [{ label: "wait s", data: s.wait_s }],
    failures: (s) => [{ label: "retries/min", data: s.retries_pm }, { label: "dead/min", data: s.dead_pm }],
    pool: (s) => [{ label: "pool", data: s.pool }, { label: "busy", data: s.busy }, { label: "in flight", data: s.in_flight }],
  };
  const charts = new Map();
  async function refreshMetrics() {
    try {
      const h = await getJson("/dashboard/history.json");
      document.querySelectorAll(".chart[data-subject]").forEach((el) => {
        const s = h.subjects[el.dataset.subject];
        const make = CHARTS[el.dataset.chart];
        if (!s || !make) return;
        const series = make(s).map((x) => ({ label: x.label, data: nulls(x.data) }));
        const old = charts.get(el);
        if (old) old.setData([h.t].concat(series.map((x) => x.data)));
        else charts.set(el, chart(el, h.t, series));
      });
    } catch (e) { /* the next tick tries again */ }
  }

  // --- Actions. ---
  function commandPath(kind, form) {
    const subject = encodeURIComponent(form.elements.subject.value);
    const q = new URLSearchParams();
    switch (kind) {
      case "pause": {
        const d = form.elements.for.value.trim();
        if (d !== "") q.set("for", d);
        return "/subjects/" + subject + "/pause" + (d !== "" ? "?" + q : "");
      }
      case "resume": return "/subjects/" + subject + "/resume";
      case "fleet-pause": {
        const d = form.elements.for.value.trim();
        if (d !== "") q.set("for", d);
        return "/fleet/" + encodeURIComponent(form.dataset.agent) + "/subjects/" + subject + "/pause" + (d !== "" ? "?" + q : "");
      }
      case "fleet-resume":
        return "/fleet/" + encodeURIComponent(form.dataset.agent) + "/subjects/" + subject + "/resume";
      case "pool-auto": return "/pools/" + subject + "/auto";
      case "pool": q.set("size", form.elements.size.value); return "/pools/" + subject + "?" + q;
      case "rate-clear": q.set("limit", "none"); return "/subjects/" + subject + "/rate?" + q;
      case "rate":
        q.set("limit", form.elements.limit.value.trim());
        q.set("burst", form.elements.burst.value || "1");
        return "/subjects/" + subject + "/rate?" + q;
    }
    throw new Error("unknown action");
  }
  async function send(kind, form) {
    const out = $("#result");
    try {
      const r = await fetch(commandPath(kind, form), {
        method: "POST", cache: "no-store", credentials: "omit",
        headers: { Authorization: "Bearer " + token() },
      });
      const text = await r.text();
      out.dataset.ok = String(r.ok);
      out.textContent = (r.ok ? "" : r.status + " ") + text;
      if (r.status === 401) { sessionStorage.removeItem(TOKEN); showAuth(); }
    } catch (e) {
      out.dataset.ok = "false";
      out.textContent = "Cannot reach the agent: " + e.message;
    }
  }
  document.querySelectorAll("form.action").forEach((form) => {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      let kind = form.dataset.action;
      const by = e.submitter;
      if (kind === "pool" && by && by.name === "auto") kind = "pool-auto";
      if (kind === "rate" && by && by.name === "clear") kind = "rate-clear";
      if (kind === "fleet-pause" && by && by.name === "resume") kind = "fleet-resume";
      if (kind === "pool" && !form.reportValidity()) return;
      send(kind, form);
    });
  });
  showAuth();

  // --- Dead letters. Everything from a message is set with textContent. ---
  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  const dash = (v) => (v === null || v === undefined || v === "" ? "—" : String(v));
  // x-agent-status 0: PHP gave no status (a timeout, a body refused before PHP).
  const httpStatus = (v) => (v === 0 ? "none" : dash(v));
  function age(s) {
    if (s === null || s === undefined) return "—";
    if (s < 120) return s + " s";
    if (s < 7200) return Math.floor(s / 60) + " min";
    if (s < 172800) return Math.floor(s / 3600) + " h";
    return Math.floor(s / 86400) + " d";
  }
  async function authed(path, method) {
    const r = await fetch(path, {
      method: method || "GET", cache: "no-store", credentials: "omit",
      headers: { Authorization: "Bearer " + token() },
    });
    if (r.status === 401) { sessionStorage.removeItem(TOKEN); showAuth(); }
    return r;
  }
  const dead = { offset: 0, limit: 50, letters: [], subject: "", query: "", detail: null, view: "json" };
  const FILTERS = ["reason", "status", "type", "older_than", "grep"];
  function deadQuery() {
    const form = $("#dead-filter");
    const q = new URLSearchParams();
    for (const name of FILTERS) {
      const v = form.elements[name].value.trim();
      if (v !== "") q.set(name, v);
    }
    return q;
  }
  function showSummary(text, bad) {
    const p = $("#dead-summary");
    p.textContent = text;
    p.dataset.ok = String(!bad);
  }
  async function loadDead() {
    if (token() === "") { showSummary("Type the admin token above to list the dead letters."); return; }
    const form = $("#dead-filter");
    dead.subject = form.elements.subject.value;
    const q = deadQuery();
    dead.query = q.toString();
    const page = new URLSearchParams(q);
    page.set("offset", String(dead.offset));
    page.set("limit", String(dead.limit));
    // The filter goes into the page's address, so a reload shows the same list.
    const here = new URLSearchParams(q);
    here.set("subject", dead.subject);
    history.replaceState(null, "", "?" + here);
    showSummary("Reading the dead-letter queue…");
    let r;
    try {
      r = await authed("/dead-letters/" + encodeURIComponent(dead.subject) + "?" + page);
    } catch (e) { showSummary("Cannot reach the agent: " + e.message, true); return; }
    if (!r.ok) { showSummary(r.status + " " + (await r.text()), true); return; }
    const data = await r.json();
    dead.letters = data.letters;
    const body = $("#dead-list tbody");
    body.replaceChildren();
    for (const l of data.letters) {
      const tr = el("tr", null, { "data-key": l.key, "data-reason": l.reason || "" });
      const box = el("input", null, { type: "checkbox", "aria-label": "select" });
      box.className = "pick";
      const pick = el("td"); pick.append(box); tr.append(pick);
      tr.append(el("td", dash(l.message_id), { "data-field": "message_id" }));
      tr.append(el("td", dash(l.type), { "data-field": "type" }));
      tr.append(el("td", dash(l.reason), { "data-field": "reason" }));
      tr.append(el("td", httpStatus(l.status), { "data-field": "status" }));
      tr.append(el("td", dash(l.attempts), { "data-field": "attempts" }));
      tr.append(el("td", age(l.age_seconds), { "data-field": "age" }));
      tr.append(el("td", dash(l.last_error), { "data-field": "last_error" }));
      const open = el("button", "Open", { type: "button" });
      open.className = "open";
      open.addEventListener("click", () => openDead(l.key));
      const cell = el("td"); cell.append(open); tr.append(cell);
      body.append(tr);
    }
    $("#dead-all").checked = false;
    const from = data.letters.length ? data.offset + 1 : 0;
    const upto = data.offset + data.letters.length;
    const all = data.complete ? String(data.matched) : "at least " + data.matched;
    showSummary(data.queue + ": " + data.total + " message(s); " + all + " match" +
      (data.letters.length ? "; showing " + from + "–" + upto : "") +
      (data.complete ? "" : " (looked at the first " + data.scanned + ")") + ".");
    $("#dead-summary").dataset.matched = String(data.matched);
    $("#dead-prev").disabled = data.offset === 0;
    $("#dead-next").disabled = upto >= data.matched;
  }
  function kv(table, pairs) {
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const [k, v] of pairs) {
      const tr = el("tr");
      tr.append(el("th", k, { scope: "row" }), el("td", v));
      body.append(tr);
    }
  }
  function showBody() {
    const d = dead.detail;
    if (!d) return;
    let view = dead.view;
    if (view === "json" && d.body.json === null) view = "text";
    const text = view === "json" ? d.body.json : view === "hex" ? d.body.hex : d.body.text;
    const pre = $("#dd-body");
    pre.textContent = text;
    pre.dataset.view = view;
    document.querySelectorAll("#dead-detail button[data-view]").forEach((b) => {
      b.setAttribute("aria-pressed", String(b.dataset.view === view));
      if (b.dataset.view === "json") b.disabled = d.body.json === null;
    });
    const cut = (view === "hex" && d.body.hex_cut) || (view !== "hex" && d.body.text_cut) ? ", cut" : "";
    $("#dd-body-size").textContent = "(" + d.body.bytes + " bytes" + (d.body.utf8 ? "" : ", not UTF-8") + cut + ")";
  }
  async function openDead(key) {
    let r;
    try {
      r = await authed("/dead-letters/" + encodeURIComponent(dead.subject) + "/message?key=" + encodeURIComponent(key));
    } catch (e) { showSummary("Cannot reach the agent: " + e.message, true); return; }
    if (!r.ok) { showSummary(r.status + " " + (await r.text()), true); return; }
    const d = await r.json();
    dead.detail = d;
    $("#dd-id").textContent = dash(d.message_id);
    const facts = $("#dd-facts");
    facts.replaceChildren();
    const fact = (name, value) => { facts.append(el("dt", name)); const dd = el("dd"); if (value instanceof Node) dd.append(value); else dd.textContent = dash(value); facts.append(dd); return dd; };
    fact("Reason", d.reason);
    fact("Status", httpStatus(d.status));
    fact("Attempts", d.attempts);
    fact("Type", d.type);
    fact("Dead-lettered", d.dead_lettered_at === null ? null : new Date(d.dead_lettered_at * 1000).toISOString() + " (" + age(d.age_seconds) + " ago)");
    fact("Subject", d.subject);
    if (d.trace_id && d.trace_url) {
      const a = el("a", d.trace_id, { href: d.trace_url, rel: "noopener noreferrer", target: "_blank" });
      a.id = "dd-trace";
      fact("Trace", a);
    } else {
      fact("Trace", d.trace_id);
    }
    $("#dd-error").textContent = dash(d.last_error_full);
    kv($("#dd-props"), d.properties);
    kv($("#dd-headers"), d.headers);
    dead.view = d.body.json !== null ? "json" : "text";
    showBody();
    $("#dead-detail").hidden = false;
    $("#dead-detail").dataset.key = d.key;
    $("#dead-detail").scrollIntoView({ block: "start" });
  }
  function finishText(job) {
    const p = job.progress;
    const verb = job.action === "replay" ? "Replayed" : "Discarded";
    let text = verb + " " + p.done + " message(s); " + p.left + " left in the queue (" + p.scanned + " looked at)";
    if (job.action === "replay" && p.routes_dropped) text += "; " + p.routes_dropped + " unverified route(s) dropped";
    if (job.state === "failed") text = "Failed after " + p.done + ": " + job.error;
    return text + ".";
  }
  async function runJob(act, params) {
    const box = $("#dead-job");
    const bar = $("#dead-progress");
    const out = $("#dead-result");
    box.hidden = false;
    bar.removeAttribute("value");
    out.dataset.state = "running";
    out.textContent = (act === "replay" ? "Replaying" : "Discarding") + "…";
    let r;
    try {
      r = await authed("/dead-letters/" + encodeURIComponent(dead.subject) + "/" + act + "?" + params, "POST");
    } catch (e) { out.dataset.state = "failed"; out.textContent = "Cannot reach the agent: " + e.message; return; }
    if (!r.ok) { out.dataset.state = "failed"; out.textContent = r.status + " " + (await r.text()); return; }
    let job = await r.json();
    const deadline = Date.now() + 3600 * 1000;
    while (job.state === "running" && Date.now() < deadline) {
      await new Promise((ok) => setTimeout(ok, 200));
      const j = await authed("/dead-letter-jobs/" + encodeURIComponent(job.id));
      if (!j.ok) break;
      job = await j.json();
      const p = job.progress;
      if (p.total > 0) { bar.max = p.total; bar.value = p.scanned; }
      out.textContent = (job.action === "replay" ? "Replaying: " : "Discarding: ") + p.done + " done, " + p.scanned + " of " + p.total + " looked at";
    }
    bar.max = 1; bar.value = 1;
    out.dataset.state = job.state;
    out.dataset.done = String(job.progress.done);
    out.textContent = finishText(job);
    $("#dead-detail").hidden = true;
    dead.detail = null;
    await loadDead();
  }
  let pending = null;
  function ask(text, run) {
    pending = run;
    $("#dead-confirm-text").textContent = text;
    $("#dead-confirm").hidden = false;
  }
  function deadPage() {
    onUnlock = () => loadDead();
    $("#dead-filter").addEventListener("submit", (e) => { e.preventDefault(); dead.offset = 0; loadDead(); });
    $("#dead-prev").addEventListener("click", () => { dead.offset = Math.max(0, dead.offset - dead.limit); loadDead(); });
    $("#dead-next").addEventListener("click", () => { dead.offset += dead.limit; loadDead(); });
    $("#dead-all").addEventListener("change", (e) => {
      document.querySelectorAll("#dead-list .pick").forEach((b) => { b.checked = e.target.checked; });
    });
    document.querySelectorAll(".dead-actions button[data-act]").forEach((b) => {
      b.addEventListener("click", () => {
        const act = b.dataset.act;
        if (b.dataset.what === "selected") {
          const keys = [...document.querySelectorAll("#dead-list .pick")].filter((x) => x.checked)
            .map((x) => x.closest("tr").dataset.key);
          if (keys.length === 0) { showSummary("Select messages first.", true); return; }
          ask((act === "replay" ? "Replay " : "Discard ") + keys.length + " selected message(s)?",
            () => runJob(act, new URLSearchParams({ keys: keys.join(",") })));
        } else {
          const n = $("#dead-summary").dataset.matched || "?";
          const filter = dead.query === "" ? "every message (no filter)" : "every message matching " + decodeURIComponent(dead.query.replace(/\+/g, " "));
          ask((act === "replay" ? "Replay " : "Discard ") + filter + " (" + n + " found)?", () => runJob(act, dead.query));
        }
      });
    });
    $("#dead-confirm-yes").addEventListener("click", () => { $("#dead-confirm").hidden = true; const run = pending; pending = null; if (run) run(); });
    $("#dead-confirm-no").addEventListener("click", () => { $("#dead-confirm").hidden = true; pending = null; });
    for (const act of ["replay", "discard"]) {
      $("#dd-" + act).addEventListener("click", () => {
        const key = $("#dead-detail").dataset.key;
        if (!key) return;
        const run = () => runJob(act, new URLSearchParams({ keys: key }));
        if (act === "discard") ask("Discard this message for good?", run); else run();
      });
    }
    $("#dd-close").addEventListener("click", () => { $("#dead-detail").hidden = true; dead.detail = null; });
    document.querySelectorAll("#dead-detail button[data-view]").forEach((b) => {
      b.addEventListener("click", () => { dead.view = b.dataset.view; showBody(); });
    });
    loadDead();
  }

  if (page === "dead-letters") deadPage();
  // --- Fleet: the rows' reachability and state from /fleet; a changed set of rows reloads. ---
  async function refreshFleet() {
    try {
      const doc = await getJson("/fleet");
      const rows = new Map();
      document.querySelectorAll("#fleet tbody tr").forEach((tr) => {
        rows.set(tr.dataset.agent + "\n" + tr.dataset.subject, tr);
      });
      let seen = 0;
      for (const m of doc.agents || []) {
        for (const [name, s] of Object.entries(m.subjects || {})) {
          const tr = rows.get(m.agent + "\n" + name);
          if (!tr) { location.reload(); return; }
          seen += 1;
          tr.dataset.reachable = String(m.reachable);
          tr.dataset.state = s.state;
          const secs = Math.floor(m.heard_ms_ago / 1000);
          tr.querySelector('td[data-field="heard"]').textContent =
            m.reachable ? secs + " s ago" : "unreachable (" + secs + " s)";
          tr.querySelector('td[data-field="state"]').textContent =
            s.state + (s.paused_until ? " until " + s.paused_until : "");
        }
      }
      if (seen !== rows.size) { location.reload(); return; }
      $("#updated").textContent = "Updated " + new Date().toLocaleTimeString();
    } catch (e) {
      $("#updated").textContent = "Cannot reach the agent: " + e.message;
    }
  }

  if (page === "overview") { refreshOverview(); every(refreshOverview); }
  if (page === "fleet") { every(refreshFleet); }
  if (page === "metrics") { refreshMetrics(); every(refreshMetrics); }
  if (page === "fpm") every(() => location.reload());
})();
