// What both browser runs share (drive.mjs, fleet.mjs): checks, waits with deadlines, and a
// Chromium session that records every dialog, console error, page error and HTTP error, writes
// the run's result to OUT/<file> and exits non-zero on any problem.
import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";

export function check(cond, what) { if (!cond) throw new Error("check failed: " + what); }

export async function until(what, ms, cond) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Runs `body(page, result)` in a fresh page of Debian's chromium (CHROMIUM overrides the path),
// then checks that no dialog and no console error appeared.
export async function session(out, file, viewport, body) {
  mkdirSync(out, { recursive: true });
  const result = {};
  const problems = [];
  const dialogs = [];
  const consoleErrors = [];
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await (await browser.newContext({ viewport })).newPage();
    page.on("dialog", async (d) => { dialogs.push(d.type() + ": " + d.message()); await d.dismiss(); });
    page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
    page.on("pageerror", (e) => consoleErrors.push("pageerror: " + e.message));
    page.on("response", (r) => { if (r.status() >= 400) consoleErrors.push("HTTP " + r.status() + " " + r.url()); });
    await body(page, result);
    check(dialogs.length === 0, "no dialog: " + dialogs.join("; "));
    check(consoleErrors.length === 0, "no console error: " + consoleErrors.join("; "));
  } catch (e) {
    problems.push(String(e && e.stack || e));
  } finally {
    result.problems = problems;
    result.dialogs = dialogs;
    result.console_errors = consoleErrors;
    writeFileSync(out + "/" + file, JSON.stringify(result, null, 2));
    await browser.close();
  }
  if (problems.length) { console.error(problems.join("\n")); process.exit(1); }
}
