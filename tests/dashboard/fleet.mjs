// Drives Debian's chromium on agent B's Fleet page (tests/dashboard.rs,
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
