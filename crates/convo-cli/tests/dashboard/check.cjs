// The dashboard in headless Chromium (Debian's, driven by playwright-core):
// it loads with no console error, its numbers equal the HTTP API's, it
// updates after a new command; the SLA chart's stacked shares sum to 100%
// with every class drawn (on the day picked in its date picker); no section
// overflows at 1440 px nor the page at 390 px; the sign-in hides the board;
// an agent's key shows their own inbox. Screenshots are saved beside
// <screenshot.png> (-390.png, -agent.png).
// Usage: node check.cjs <gateway base URL> <account> <credential> <screenshot.png> <agent> <agent's key> <their address>
"use strict";
const { chromium } = require("playwright-core");

const [base, account, key, screenshot, agent, agentKey, agentAddress] = process.argv.slice(2);
const api = async (path, init = {}) => {
  const response = await fetch(`${base}/v1/accounts/${account}${path}`, {
    ...init,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
  });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${await response.text()}`);
  return response.json();
};
const fail = (message) => { throw new Error(message); };
const total = (r) => r.sla_optimal + r.sla_low + r.sla_breached;

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

    // The busiest day, picked in the date picker: every hour's stacked shares sum to 100%,
    // every class drawn inside the chart (an hour with three classes shows its breached share).
    const busiest = days.rows.reduce((a, r) => (a && total(a) >= total(r) ? a : r), null);
    await page.fill("#day-pick", busiest.bucket);
    await page.waitForFunction((d) => document.getElementById("sla-day").textContent.startsWith(d), busiest.bucket,
      { timeout: 15000 });
    const busyHours = await api(`/reports/sla?by=account&period=hour&from=${busiest.bucket}&to=${busiest.bucket}`);
    let three = 0;
    for (const r of busyHours.rows) {
      if (!total(r)) continue;
      const hour = r.bucket.slice(11, 13);
      const rects = await page.$$eval(`#sla-chart rect[data-hour="${hour}"]`, (all) => all.map((e) => ({
        series: e.dataset.series, value: Number(e.dataset.value),
        y: Number(e.getAttribute("y")), height: Number(e.getAttribute("height")) })));
      const sum = rects.reduce((t, e) => t + e.value, 0);
      if (Math.abs(sum - 100) > 0.2) fail(`SLA shares at ${hour}h sum to ${sum}%`);
      for (const e of rects) {
        if (e.y < -0.01 || e.y + e.height > 150.01) fail(`SLA ${e.series} at ${hour}h drawn outside the chart: ${JSON.stringify(e)}`);
      }
      if (r.sla_optimal && r.sla_low && r.sla_breached) {
        three++;
        const breached = rects.find((e) => e.series === "breached");
        const expected = Math.round(r.sla_breached * 1000 / total(r)) / 10;
        // (rounded shares may sum to 100.1: the stack is scaled to fit)
        if (breached.value !== expected || breached.height < 150 * expected / 100.2 - 0.01) {
          fail(`breached at ${hour}h: ${JSON.stringify(breached)}, API ${expected}%`);
        }
      }
      checks++;
    }
    if (!three) fail(`no hour with three SLA classes on ${busiest.bucket}: the stacked check needs one`);
    // A conversation's timeline opens from the at-risk table: its audit entries, as the API gives them.
    const risky = await page.getAttribute("#at-risk button[data-open]", "data-open").catch(() => null)
      || fail("nothing at risk to open (the test serves with a wide risk margin)");
    await page.click(`#at-risk button[data-open="${risky}"]`);
    await page.waitForSelector(`dialog#timeline[data-loaded="${risky}"]`, { timeout: 15000 });
    const timeline = await api(`/conversations/${encodeURIComponent(risky)}/timeline`);
    const shownActions = await page.$$eval("#timeline-entries li[data-action]", (all) => all.map((e) => e.dataset.action));
    const apiActions = timeline.entries.map((e) => e.action);
    if (!apiActions.length || JSON.stringify(shownActions) !== JSON.stringify(apiActions)) {
      fail(`the timeline of ${risky}: page ${shownActions}, API ${apiActions}`);
    }
    await page.screenshot({ path: screenshot.replace(/\.png$/, "-timeline.png") });
    await page.keyboard.press("Escape");
    checks++;
    await page.screenshot({ path: screenshot, fullPage: true });

    // At 1440 px every table fits its card (none scrolls); at 390 px nothing overflows the
    // page or a card (a wide table scrolls inside its card).
    for (const width of [1440, 390]) {
      await page.setViewportSize({ width, height: 900 });
      await page.waitForTimeout(200);
      const over = await page.evaluate((wide) => {
        const out = [];
        const page = document.documentElement.scrollWidth;
        if (page > window.innerWidth) out.push(`the page is ${page} px wide`);
        const boxes = document.querySelectorAll(wide ? "main:not([hidden]) section, main:not([hidden]) .scroll" : "main:not([hidden]) section");
        for (const s of boxes) {
          const name = s.closest("section").querySelector("h2").textContent.trim();
          if (s.scrollWidth > s.clientWidth + 1) out.push(`"${name}" holds ${s.scrollWidth} px in ${s.clientWidth}`);
        }
        return out;
      }, width >= 1440);
      if (over.length) fail(`at ${width} px: ${over.join("; ")}`);
      checks++;
    }
    await page.screenshot({ path: screenshot.replace(/\.png$/, "-390.png"), fullPage: true });
    if (errors.length) fail(`errors in the page:\n${errors.join("\n")}`);

    // Signed out: the sign-in form alone, no empty board under it.
    const signIn = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    await signIn.goto(`${base}/dashboard`);
    const shown = await signIn.evaluate(() => ["login", "board", "mine"].map((id) => getComputedStyle(document.getElementById(id)).display));
    if (shown[0] === "none" || shown[1] !== "none" || shown[2] !== "none") fail(`signed out, login/board/inbox display: ${shown}`);
    checks++;

    // An agent's key (from their network, through the loopback proxy): their own inbox.
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, extraHTTPHeaders: { "X-Forwarded-For": agentAddress } });
    const mine = await context.newPage();
    const agentErrors = [];
    // The page asks for the dashboard first; an agent's 403 there is how it learns to show the inbox.
    mine.on("console", (m) => { if (m.type() === "error" && !/status of 403/.test(m.text())) agentErrors.push(`console: ${m.text()}`); });
    mine.on("pageerror", (e) => agentErrors.push(`page: ${e.message}`));
    await mine.goto(`${base}/dashboard#account=${account}&key=${encodeURIComponent(agentKey)}`);
    await mine.waitForSelector('body[data-ready="1"]', { timeout: 20000 }).catch(async (e) => {
      fail(`the agent's page never showed data (status: ${await mine.textContent("#status")}): ${e.message}`);
    });
    const inbox = await (await fetch(`${base}/v1/accounts/${account}/inbox`, {
      headers: { Authorization: `Bearer ${agentKey}`, "X-Forwarded-For": agentAddress } })).json();
    const visible = await mine.evaluate(() => ({ board: !document.getElementById("board").hidden, mine: !document.getElementById("mine").hidden,
      assigned: [...document.querySelectorAll("#mine-assigned tbody tr[data-conversation]")].map((r) => r.dataset.conversation),
      state: document.getElementById("mine-state").textContent }));
    if (visible.board || !visible.mine) fail(`an agent's key: board ${visible.board}, inbox ${visible.mine}`);
    const expected = inbox.assigned.map((c) => c.conversation);
    if (JSON.stringify(visible.assigned) !== JSON.stringify(expected)) fail(`the agent's inbox: page ${visible.assigned}, API ${expected}`);
    if (!visible.state.startsWith(inbox.agent)) fail(`the agent's inbox names ${visible.state}, not ${inbox.agent}`);
    if (agentErrors.length) fail(`errors in the agent's page:\n${agentErrors.join("\n")}`);
    await mine.screenshot({ path: screenshot.replace(/\.png$/, "-agent.png"), fullPage: true });
    checks++;
    // Their conversation's timeline opens from the inbox too (an agent reads no audit log).
    await mine.click(`#mine-assigned button[data-open="${expected[0]}"]`);
    await mine.waitForSelector(`dialog#timeline[data-loaded="${expected[0]}"]`, { timeout: 15000 });
    const agentActions = await mine.$$eval("#timeline-entries li[data-action]", (all) => all.length);
    if (!agentActions) fail(`the agent's timeline of ${expected[0]} is empty`);
    if (agentErrors.length) fail(`errors in the agent's page:\n${agentErrors.join("\n")}`);
    checks++;
    console.log(JSON.stringify({ ok: true, checks, day }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.log(JSON.stringify({ ok: false, error: e.message }));
  process.exit(1);
});
