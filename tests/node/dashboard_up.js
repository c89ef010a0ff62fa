// Drives the dashboard `quark up` serves, in headless Chromium, in step with
// tests/learning_loop.rs: once the loop view shows MODEL as champion after a promoted cycle it
// says "READY <feedback count>", then waits for "EXPECT <count>" on stdin and for the page to
// show that much feedback without a reload, and says DONE.
// Usage: node dashboard_up.js URL MODEL SCREENSHOT_DIR
"use strict";
const { open } = require("./browser");
const readline = require("readline");

const [url, model, shots] = process.argv.slice(2);
const lines = readline.createInterface({ input: process.stdin });
const next = () => new Promise((resolve) => lines.once("line", resolve));

async function main() {
  const { browser, page, problems } = await open();
  await page.goto(url);
  const shows = async (what, test, arg) => {
    try {
      await page.waitForFunction(test, arg, { timeout: 60000 });
    } catch (e) {
      const html = await page.evaluate(() => document.querySelector("section[data-page=loop]")?.innerText);
      throw new Error(`the page never showed ${what}:\n${html}\nconsole: ${problems.join(" | ")}`);
    }
  };
  await shows("the live stream", () => document.querySelector("#connection")?.textContent === "live");
  await shows(`${model} as champion`, (m) =>
    document.querySelector('#aliases tr[data-alias="champion"] td.model')?.textContent === m, model);
  await shows("a promoted cycle", () => document.querySelector('#cycles tr[data-at="promoted"]') !== null);
  console.log(`READY ${await page.textContent("#feedback")}`);
  const expected = (await next()).replace("EXPECT ", "");
  await shows(`${expected} feedback`, (n) => document.querySelector("#feedback")?.textContent === n, expected);
  await page.screenshot({ path: `${shots}/dashboard-up.png`, fullPage: true });
  await browser.close();
  if (problems.length) throw new Error(`console errors: ${problems.join(" | ")}`);
  console.log("DONE");
  lines.close();
}

main().catch((e) => { console.error(e); process.exit(1); });
