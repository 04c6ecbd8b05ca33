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
    document.querySelectorAll("form.action button").forEach((b) => { b.disabled = !unlocked; });
  }
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
      if (kind === "pool" && !form.reportValidity()) return;
      send(kind, form);
    });
  });
  showAuth();

  if (page === "overview") { refreshOverview(); every(refreshOverview); }
  if (page === "metrics") { refreshMetrics(); every(refreshMetrics); }
  if (page === "fpm") every(() => location.reload());
})();
