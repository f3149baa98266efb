// The dashboard in headless Chromium (Debian's, driven by playwright-core):
// it loads with no console error, its numbers equal the HTTP API's, it
// updates after a new command, and a screenshot is saved.
// Usage: node check.cjs <gateway base URL> <account> <credential> <screenshot.png> <agent>
"use strict";
const { chromium } = require("playwright-core");

const [base, account, key, screenshot, agent] = process.argv.slice(2);
const api = async (path, init = {}) => {
  const response = await fetch(`${base}/v1/accounts/${account}${path}`, {
    ...init,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
  });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${await response.text()}`);
  return response.json();
};
const fail = (message) => { throw new Error(message); };

(async () => {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const errors = [];
  let checks = 0;
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
    page.on("pageerror", (e) => errors.push(`page: ${e.message}`));
    page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()}`));
    await page.goto(`${base}/dashboard#account=${account}&key=${encodeURIComponent(key)}`);
    await page.waitForSelector('body[data-ready="1"]', { timeout: 20000 }).catch(async (e) => {
      const status = await page.textContent("#status").catch(() => "");
      fail(`the page never showed data (status: ${status}; ${errors.join("; ")}): ${e.message}`);
    });
    if (page.url().includes(key)) fail("the credential stayed in the address bar");

    // The queues and agents the page shows are the API's.
    const live = await api("/live");
    for (const c of live.campaigns) {
      for (const field of ["queued", "assigned", "at_risk", "breached"]) {
        const shown = await page.textContent(`tr[data-campaign="${c.campaign}"] [data-field="${field}"]`);
        if (Number(shown) !== c[field]) fail(`campaign ${c.campaign} ${field}: page ${shown}, API ${c[field]}`);
        checks++;
      }
    }
    for (const [state, n] of Object.entries(live.agents_by_state)) {
      const shown = await page.textContent(`[data-state="${state}"] b`);
      if (Number(shown) !== n) fail(`agents ${state}: page ${shown}, API ${n}`);
      checks++;
    }
    // The SLA chart's bars are the report's percentages, hour by hour.
    const days = await api("/reports/sla?by=account&period=day");
    const day = days.rows.map((r) => r.bucket).sort().pop() || fail("no SLA figures to chart");
    const hours = await api(`/reports/sla?by=account&period=hour&from=${day}&to=${day}`);
    if (!hours.rows.length) fail("no hourly SLA figures");
    for (const r of hours.rows) {
      const n = r.sla_optimal + r.sla_low + r.sla_breached;
      if (!n) continue;
      const expected = Math.round(r.sla_optimal * 1000 / n) / 10;
      const hour = r.bucket.slice(11, 13);
      const shown = await page.getAttribute(`#sla-chart rect[data-hour="${hour}"][data-series="optimal"]`, "data-value");
      if (Number(shown) !== expected) fail(`SLA optimal % at ${hour}h: page ${shown}, API ${expected}`);
      checks++;
    }

    // A new command: the page follows.
    const before = live.agents_by_state.break || 0;
    const reply = await api("/commands/set_agent_state", {
      method: "POST",
      body: JSON.stringify({ id: `dashboard-${Date.now()}`, command: { type: "set_agent_state", agent, state: "break" } }),
    });
    if (reply.outcome !== "committed") fail(`the command was not committed: ${JSON.stringify(reply)}`);
    await page.waitForFunction((n) => Number(document.querySelector('[data-state="break"] b')?.textContent) === n,
      before + 1, { timeout: 15000 });
    const after = await api("/live");
    if ((after.agents_by_state.break || 0) !== before + 1) fail("the API disagrees with the page after the command");
    checks++;

    await page.screenshot({ path: screenshot, fullPage: true });
    if (errors.length) fail(`errors in the page:\n${errors.join("\n")}`);
    console.log(JSON.stringify({ ok: true, checks, day }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.log(JSON.stringify({ ok: false, error: e.message }));
  process.exit(1);
});
