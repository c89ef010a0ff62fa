// Keeps the dashboard open in headless Chromium for SECONDS while quark-bench-dashboard loads
// the bus, and prints (JSON) how old each state was when drawn and how long drawing took.
// Usage: node dashboard_load.js URL SECONDS
"use strict";
const { open } = require("./browser");

const [url, seconds] = process.argv.slice(2);
const summary = (v) => {
  const s = [...v].sort((a, b) => a - b);
  const at = (p) => s[Math.round((s.length - 1) * p)];
  return { count: s.length, p50: at(0.5), p95: at(0.95), max: at(1) };
};

async function main() {
  const { browser, page, problems } = await open();
  // Times each state from its arrival to the end of its drawing, and its age when drawn.
  await page.addInitScript(() => {
    window.__drawn = [];
    const listen = EventSource.prototype.addEventListener;
    EventSource.prototype.addEventListener = function (type, handler, ...rest) {
      if (type !== "state") return listen.call(this, type, handler, ...rest);
      return listen.call(this, type, (e) => {
        const started = performance.now();
        handler(e);
        const state = JSON.parse(e.data);
        window.__drawn.push({ render_ms: performance.now() - started, age_ms: Date.now() - state.at_ms, bytes: e.data.length });
      }, ...rest);
    };
  });
  await page.goto(url);
  const tabs = ["loop", "topics", "messages", "serving"];
  const end = Date.now() + Number(seconds) * 1000;
  for (let i = 0; Date.now() < end; i++) {
    await page.click(`#tabs a[href="#${tabs[i % tabs.length]}"]`);
    await page.waitForTimeout(2000);
  }
  const drawn = await page.evaluate(() => window.__drawn);
  await browser.close();
  if (problems.length) throw new Error(problems.join(" | "));
  const pick = (k) => drawn.slice(2).map((d) => d[k]);
  console.log(JSON.stringify({ states: drawn.length, render_ms: summary(pick("render_ms")),
    age_ms: summary(pick("age_ms")), state_kib: summary(pick("bytes").map((b) => b / 1024)) }));
}

main().catch((e) => { console.error(e); process.exit(1); });
