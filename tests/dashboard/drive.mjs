// Drives Debian's chromium against a running agent's dashboard; called by tests/it/dashboard.rs.
// Environment: BASE (http://127.0.0.1:PORT), TOKEN, OUT (screenshots and result.json),
// AGENT_BIN and CONFIG (to publish with `amqp-agent publish`), HOSTILE (the queue name holding
// markup), BODY_MARKUP (how the dead letter `big-script`'s body starts), CHROMIUM (default
// /usr/bin/chromium). The subject `event` has 10 dead letters when it starts: 3 `rejected`
// (fixed by the time they are replayed), 4 `max_attempts`, 3 `body_too_large`. Exits non-zero with a message on any failure.
// Every wait has a deadline; nothing sleeps a fixed time.
import { execFileSync } from "node:child_process";
import { check, session, until } from "./session.mjs";

const { BASE, TOKEN, OUT, AGENT_BIN, CONFIG, HOSTILE, BODY_MARKUP } = process.env;
const PAUSE_FOR = process.env.PAUSE_FOR || "6s";
const steps = [];
const step = (s) => { steps.push(s); console.error("drive: " + s); };

async function status() {
  const r = await fetch(BASE + "/status");
  check(r.ok, "/status answers");
  return r.json();
}
function publish(subject, behave, n) {
  for (let i = 0; i < n; i++) {
    execFileSync(AGENT_BIN, ["--config", CONFIG, "publish", "--subject", subject,
      JSON.stringify({ id: "dash-" + subject + "-" + Date.now() + "-" + i, behave })], { stdio: "ignore" });
  }
}

await session(OUT, "result.json", { width: 1600, height: 900 }, async (page, result) => {
  result.steps = steps;

  // A few samples of history (one per 5 s) with a trickle of messages, then a quiet agent.
  await until("4 samples of history", 60000, async () => {
    publish("event", "sleep:50", 1);
    const h = await (await fetch(BASE + "/dashboard/history.json")).json();
    return h.t.length >= 4;
  });
  await until("a quiet agent", 30000, async () => {
    const s = await status();
    return Object.values(s.subjects).every((x) => x.busy === 0 && x.in_flight === 0);
  });

  // --- Overview: every subject, numbers as /status has them, the hostile name as text. ---
  const before = await status();
  await page.goto(BASE + "/");
  await page.waitForSelector("tr[data-subject]");
  const rows = await page.$$eval("tr[data-subject]", (trs) => trs.map((tr) => {
    const cells = {};
    tr.querySelectorAll("td[data-field]").forEach((td) => { cells[td.dataset.field] = td.textContent; });
    return { subject: tr.dataset.subject, state: tr.dataset.state, cells };
  }));
  result.overview = rows;
  result.status_before = before;
  check(rows.length === Object.keys(before.subjects).length, "one row per subject");
  const hostileCell = rows.find((r) => r.cells.queue === HOSTILE);
  check(hostileCell, "the queue name holding markup shows as text, exactly");
  check(await page.$$eval("main img, main svg, main iframe", (x) => x.length) === 0, "no element injected");
  // Sparklines drawn once the data arrived.
  await page.waitForSelector(".sparkline canvas", { timeout: 15000 });
  await page.screenshot({ path: OUT + "/overview.png", fullPage: true });
  step("overview");

  // --- Metrics: charts per subject. ---
  await page.goto(BASE + "/dashboard/metrics");
  await page.waitForSelector(".chart canvas", { timeout: 15000 });
  const charts = await page.$$eval(".chart canvas", (x) => x.length);
  check(charts >= 2 * Object.keys(before.subjects).length, "charts for every subject: " + charts);
  await page.screenshot({ path: OUT + "/metrics.png", fullPage: true });
  step("metrics");

  // --- FPM: children from the status page, slow requests marked. ---
  publish("event", "sleep:4000", 2);
  await until("slow requests on the status page", 20000, async () => {
    const s = await status();
    return s.upstreams.some((u) => u.fpm.busy.some((b) => b.duration_ms >= 700));
  });
  await page.goto(BASE + "/dashboard/fpm");
  await page.waitForSelector("table.children tbody tr");
  result.slow_marked = await page.$$eval("tr[data-slow=true] .slow", (x) => x.length);
  check(result.slow_marked >= 1, "a slow request is marked");
  result.fpm_uris = await page.$$eval("td.uri", (x) => x.map((td) => td.textContent).filter((t) => t));
  check(result.fpm_uris.some((u) => u.includes("<script>")), "a URI holding <script> shows as text");
  await page.screenshot({ path: OUT + "/fpm.png", fullPage: true });
  step("fpm");
  await until("the slow requests to end", 30000, async () => {
    const s = await status();
    return Object.values(s.subjects).every((x) => x.busy === 0 && x.in_flight === 0);
  });

  // --- Actions: read-only without the token; pause `event` for a while with it. ---
  await page.goto(BASE + "/dashboard/actions");
  check(await page.$eval("form.action[data-action=pause] button", (b) => b.disabled), "actions locked without the token");
  await page.fill("#token", TOKEN);
  await page.click("#token-form button");
  await page.waitForSelector("#auth-state[data-unlocked=true]");
  check(await page.evaluate(() => document.cookie) === "", "no cookie");
  await page.selectOption("form.action[data-action=pause] select", "event");
  await page.fill("form.action[data-action=pause] input[name=for]", PAUSE_FOR);
  await page.click("form.action[data-action=pause] button");
  await page.waitForFunction(() => document.querySelector("#result").textContent.includes("paused for"), null, { timeout: 10000 });
  result.pause_answer = await page.textContent("#result");
  await page.screenshot({ path: OUT + "/actions.png", fullPage: true });
  step("paused: " + result.pause_answer.trim());

  // Shown as "paused until …" on the overview and in /status; nothing consumed meanwhile.
  await page.goto(BASE + "/");
  const pausedText = await page.textContent("tr[data-subject=event] td[data-field=state]");
  check(pausedText.startsWith("paused until "), "overview says paused until: " + pausedText);
  result.paused_text = pausedText;
  const paused = await status();
  check(paused.subjects.event.paused_until, "/status has paused_until");
  check(paused.subjects.event.state === "paused", "/status state paused");
  await page.screenshot({ path: OUT + "/overview-paused.png", fullPage: true });
  const received = paused.subjects.event.received;
  const acked = paused.subjects.event.acked;
  publish("event", "ok", 3);
  // Watch until a second before the pause ends: the 3 confirmed messages wait in the queue.
  const endsAt = paused.subjects.event.paused_until_unix;
  let watched = 0;
  await until("the end of the pause's window", 60000, async () => {
    const s = await status();
    check(s.subjects.event.received === received, "nothing consumed while paused");
    watched++;
    return Date.now() / 1000 >= endsAt - 1;
  });
  check(watched >= 3, "watched the paused subject a while: " + watched);
  result.paused_status = (await status()).subjects.event;
  step("paused on the page");

  // It resumes by itself; the page (auto-refresh) says so and the 3 messages are handled.
  await page.waitForFunction(
    () => document.querySelector("tr[data-subject=event] td[data-field=state]").textContent === "consuming",
    null, { timeout: 30000 });
  await until("the 3 messages acked after the pause", 30000, async () => {
    const s = await status();
    return s.subjects.event.acked >= acked + 3 ? s : null;
  });
  result.resumed_status = (await status()).subjects.event;
  check(result.resumed_status.paused_until === null, "no paused_until after it ran out");
  step("resumed by itself");

  // --- Dead letters: browse, open (bodies as text), filter on reason, replay the matches. ---
  result.dead = {};
  await page.goto(BASE + "/dashboard/dead-letters?subject=event");
  const rowsShown = (n) => page.waitForFunction((n) => document.querySelectorAll("#dead-list tbody tr").length === n, n, { timeout: 20000 });
  await rowsShown(10);
  result.dead.listed = await page.$$eval("#dead-list tbody tr", (x) => x.length);
  const reasons = await page.$$eval("#dead-list td[data-field=reason]", (x) => x.map((td) => td.textContent));
  check(new Set(reasons).size === 3, "three reasons: " + reasons.join(", "));
  await page.screenshot({ path: OUT + "/dead-letters.png", fullPage: true });
  step("dead letters listed");

  // The body holding markup: shown as text, nothing injected, nothing run.
  const openRow = async (id) => {
    await page.locator("#dead-list tbody tr")
      .filter({ has: page.locator("td[data-field=message_id]", { hasText: id }) })
      .locator("button.open").click();
    await page.waitForFunction((id) => {
      const d = document.querySelector("#dead-detail");
      return !d.hidden && document.querySelector("#dd-id").textContent === id;
    }, id, { timeout: 20000 });
  };
  await openRow("big-script");
  const shownBody = await page.textContent("#dd-body");
  check(shownBody.startsWith(BODY_MARKUP), "the body shows as text: " + shownBody.slice(0, 80));
  check(await page.$$eval("#dead-detail img, #dead-detail script, #dd-body *", (x) => x.length) === 0, "no element from the body");
  check((await page.textContent("#dd-facts")).includes("body_too_large"), "reason shown");
  await page.screenshot({ path: OUT + "/dead-letter.png", fullPage: true });
  await page.click("#dead-detail button[data-view=hex]");
  check((await page.textContent("#dd-body")).startsWith("00000000  3c 73 63 72 69 70 74 3e"), "hex view");
  await openRow("big-binary");
  check((await page.textContent("#dd-body")).startsWith("\ufffd\ufffd<b>not utf-8</b>"), "invalid UTF-8 replaced, shown as text");
  await openRow("big-line");
  check((await page.$eval("#dd-body", (p) => p.textContent.length)) === 1 << 20, "a megabyte on one line, whole");
  await openRow("failing-0");
  check((await page.getAttribute("#dd-body", "data-view")) === "json", "a JSON body pretty-printed");
  check((await page.textContent("#dd-body")).includes('\n  "behave": "status:503"'), "pretty JSON");
  check((await page.textContent("#dd-error")).includes("503"), "the last error");
  // Its trace id links to admin.trace_url (not followed: it leads nowhere in the test).
  result.dead.trace_link = await page.$eval("#dd-trace", (a) => [a.textContent, a.getAttribute("href")]);
  step("dead letters opened: text, hex, JSON");

  // Filter on reason: 3 of 10; replay every match; the count at the end.
  await page.fill("#dead-filter input[name=reason]", "rejected");
  await page.click("#dead-filter button[type=submit]");
  await rowsShown(3);
  result.dead.filtered = await page.$$eval("#dead-list td[data-field=reason]", (x) => x.map((td) => td.textContent));
  result.dead.acked_before = (await status()).subjects.event.acked;
  await page.click("#dead-replay-all");
  await page.waitForSelector("#dead-confirm:not([hidden])");
  await page.click("#dead-confirm-yes");
  await page.waitForSelector("#dead-result[data-state=done]", { timeout: 30000 });
  result.dead.replay_text = await page.textContent("#dead-result");
  await rowsShown(0);
  await page.screenshot({ path: OUT + "/dead-letters-replayed.png", fullPage: true });
  const handled = await until("the 3 replays handled", 30000, async () => {
    const s = await status();
    return s.subjects.event.acked >= result.dead.acked_before + 3 && s.subjects.event.in_flight === 0 ? s : null;
  });
  result.dead.acked_after = handled.subjects.event.acked;
  step("replayed: " + result.dead.replay_text);

});
