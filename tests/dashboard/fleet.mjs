// Drives Debian's chromium on agent B's Fleet page (tests/it/dashboard.rs,
// the_fleet_page_in_chromium). Environment: BASE (B's http://127.0.0.1:PORT), A_BASE (A's),
// A_ID and B_ID (their fleet ids), TOKEN, OUT, CHROMIUM. B's page must list both agents, and
// pause A's `event` subject for a minute over the broker: A's /status then says paused until …,
// and so does B's page after its refresh; Resume undoes it. No dialog, no console error.
// Every wait has a deadline; nothing sleeps a fixed time.
import { check, session, until } from "./session.mjs";

const { BASE, A_BASE, A_ID, B_ID, TOKEN, OUT } = process.env;
async function aStatus() { return (await fetch(A_BASE + "/status")).json(); }

await session(OUT, "fleet-result.json", { width: 1600, height: 700 }, async (page, result) => {
  // Both agents, both subjects, reachable (the page is rendered from what B heard).
  await until("B's page lists both agents", 30000, async () => {
    await page.goto(BASE + "/dashboard/fleet");
    const rows = await page.$$eval("#fleet tbody tr", (trs) => trs.map((tr) => ({
      agent: tr.dataset.agent, subject: tr.dataset.subject, reachable: tr.dataset.reachable,
    })));
    result.rows = rows;
    return [A_ID, B_ID].every((id) => ["event", "command"].every((s) =>
      rows.some((r) => r.agent === id && r.subject === s && r.reachable === "true")));
  });
  // The figures on B's page are A's (its heartbeat's), as A's own /status has them; A is quiet,
  // so they hold still between the two reads.
  const cells = await page.$$eval("#fleet tbody tr", (trs) => trs.map((tr) => ({
    agent: tr.dataset.agent, subject: tr.dataset.subject,
    cells: [...tr.querySelectorAll("td")].map((td) => td.textContent),
  })));
  const aStatusNow = await aStatus();
  for (const subject of ["event", "command"]) {
    const r = cells.find((c) => c.agent === A_ID && c.subject === subject);
    const s = aStatusNow.subjects[subject];
    // Columns: agent, host, pid, version, heard, subject, queue, state, pool, busy, in flight,
    // acked, retried, dead.
    check(r.cells[6] === s.queue, subject + " queue as A's /status");
    check(r.cells[7] === s.state, subject + " state as A's /status: " + r.cells[7]);
    check(r.cells[8] === String(s.pool_size), subject + " pool as A's /status");
    check(r.cells[10] === String(s.in_flight), subject + " in flight as A's /status");
    check(r.cells[11] === String(s.acked), subject + " acked as A's /status");
    check(r.cells[13] === String(s.dead_lettered), subject + " dead as A's /status");
  }
  result.compared_with_status = true;
  const row = `#fleet tbody tr[data-agent="${A_ID}"][data-subject="event"]`;
  check(await page.$eval(row + " button", (b) => b.disabled), "commands locked without the token");
  await page.fill("#token", TOKEN);
  await page.click("#token-form button");
  await page.fill(row + " input[name=for]", "60s");
  await page.click(row + " button:not([name])");
  await page.waitForFunction(() => document.querySelector("#result").textContent.includes("paused for"), null, { timeout: 10000 });
  result.pause_answer = await page.textContent("#result");
  const a = await until("A paused", 10000, async () => {
    const s = await aStatus();
    return s.subjects.event.paused_until ? s : null;
  });
  result.a_paused_until = a.subjects.event.paused_until;
  // B's page follows A's next heartbeat on its auto-refresh.
  await page.waitForFunction((sel) => document.querySelector(sel + ' td[data-field="state"]').textContent.startsWith("paused until"), row, { timeout: 20000 });
  result.state_text = await page.textContent(row + ' td[data-field="state"]');
  await page.screenshot({ path: OUT + "/fleet.png", fullPage: true });
  await page.click(row + " button[name=resume]");
  await page.waitForFunction(() => document.querySelector("#result").textContent.includes("resumed"), null, { timeout: 10000 });
  await until("A resumed", 10000, async () => (await aStatus()).subjects.event.state === "consuming");
  result.resumed = true;
});
