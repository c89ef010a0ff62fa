// Drives the dashboard in headless Chromium (Debian's, through playwright-core) in step with
// tests/dashboard.rs: it says READY, LIVE and DONE on stdout and waits for FIXED on stdin.
// Usage: node dashboard.js URL SCREENSHOT_DIR
"use strict";
const { open } = require("./browser");
const readline = require("readline");

const [url, shots] = process.argv.slice(2);
const lines = readline.createInterface({ input: process.stdin });
const next = () => new Promise((resolve) => lines.once("line", resolve));
const say = (word) => console.log(word);

async function main() {
  const { browser, page, problems } = await open();
  await page.goto(url + "#topics");
  const held = 'tr[data-topic="feedback.received"] span[data-consumer="held"]';
  // Waits for `selector` to read `expected`; says what it read instead when it never does.
  const text = async (selector, expected) => {
    try {
      await page.waitForFunction(([s, t]) => document.querySelector(s)?.textContent === t, [selector, expected], { timeout: 60000 });
    } catch (e) {
      const read = await page.evaluate((s) => document.querySelector(s)?.textContent, selector);
      throw new Error(`${selector} read ${JSON.stringify(read)}, not ${JSON.stringify(expected)}; console: ${problems.join(" | ")}`);
    }
  };
  await text("#connection", "live");
  await text(held, "held 2");
  await text("#letter-count", "3");
  await text('tr[data-topic="feedback.received"] td:last-child', "3");
  await text("#feedback", "3");
  await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });
  say("READY");
  // More events arrive: the page shows them without a reload.
  await text(held, "held 4");
  await text("#letter-count", "5");
  await text("#feedback", "5");
  say("LIVE");
  await next();
  // The consumer is fixed: redrive every letter with the key.
  await page.click('#tabs a[href="#letters"]');
  await page.fill("#key", "test-key");
  await page.fill("#reason", "ratings of 0 are read now");
  await page.click("#redrive-all");
  await text("#status", "redrove 5 dead letter(s)");
  await text("#letter-count", "0");
  // The redelivered copies are the same events: counted once.
  await text("#feedback", "5");
  await page.screenshot({ path: `${shots}/dashboard-redriven.png`, fullPage: true });
  await browser.close();
  if (problems.length) throw new Error(`console errors: ${problems.join(" | ")}`);
  say("DONE");
  lines.close();
}

main().catch((e) => { console.error(e); process.exit(1); });
