// Walks every page of the dashboard in headless Chromium (Debian's, through playwright-core)
// for tests/dashboard.rs, screenshots each, and rolls the champion back; says DONE at the end.
// Usage: node dashboard_pages.js URL SCREENSHOT_DIR FIRST_MODEL SECOND_MODEL
"use strict";
const { open } = require("./browser");

const [url, shots, first, second] = process.argv.slice(2);

async function main() {
  const { browser, page, problems } = await open();
  // Waits for `check` (run in the page with `arg`) to hold; says what the page showed when not.
  const until = async (what, check, arg) => {
    try {
      await page.waitForFunction(check, arg, { timeout: 60000 });
    } catch (e) {
      const text = await page.evaluate(() => document.querySelector("main").innerText);
      throw new Error(`${what}: never seen; the page read:\n${text}\nconsole: ${problems.join(" | ")}`);
    }
  };
  const text = (selector) => document.querySelector(selector)?.textContent;
  const shot = (name) => page.screenshot({ path: `${shots}/dashboard-${name}.png`, fullPage: true });
  const show = async (tab) => { await page.click(`#tabs a[href="#${tab}"]`); };

  await page.goto(url);
  // The loop: the champion, the feedback, the job running with its loss curve.
  await until("the second model as champion", (b) =>
    document.querySelector('#aliases tr[data-alias="champion"] td.model')?.textContent === b, second);
  await until("the first as previous", (a) =>
    document.querySelector('#aliases tr[data-alias="previous"] td.model')?.textContent === a, first);
  await until("the feedback", () => document.querySelector("#feedback")?.textContent === "1");
  await until("a running job at step 40 of 100", () => {
    const bar = document.querySelector('#jobs tr[data-state="running"] progress');
    return bar && bar.value === 40 && bar.max === 100
      && document.querySelectorAll('#jobs tr[data-state="running"] svg.spark polyline').length === 1;
  });
  await until("two cycles evaluated and promoted", () =>
    document.querySelectorAll('#cycles tr[data-at="promoted"]').length === 2);
  await shot("loop");
  // An operator asks for a retraining (the key is typed in once for every action).
  await page.fill("#key", "test-key");
  await page.fill("#reason", "the answers drifted");
  await page.click("#retrain");
  await until("the retraining asked for", () => /^request \w+ sent$/.test(document.querySelector("#status").textContent));
  await page.fill("#reason", "");

  await show("topics");
  await until("the served responses counted", () =>
    document.querySelector('tr[data-topic="response.served"] td.messages')?.textContent === "3");
  await shot("topics");

  // Models: the timeline with the gate's checks, the metrics chart, then a rollback.
  await show("models");
  await until("two promotions through the gate", () =>
    [...document.querySelectorAll('#moves tr[data-move="gate_passed"][data-alias="champion"] td.gate')]
      .filter((td) => td.textContent.includes("✓ perplexity")).length === 2);
  await until("perplexity across both versions", () =>
    document.querySelector('figure[data-metric="perplexity"] figcaption')?.textContent === "perplexity: 13.900"
    && document.querySelectorAll('figure[data-metric="perplexity"] circle').length === 2);
  // At the first move's moment the first model was the challenger and nothing else: the
  // registry stamps each move after the one before it, so its promotion comes a moment later.
  await page.fill("#at-slider", "0");
  await until("the aliases at the start", (a) => {
    const rows = [...document.querySelectorAll("#aliases-at tr")].map((tr) => tr.textContent);
    const models = [...document.querySelectorAll("#aliases-at td.model")].map((td) => td.textContent);
    return models.length === 1 && models[0] === a && rows.some((r) => r.startsWith("challenger"));
  }, first);
  await page.click("#at-now");
  await page.fill("#reason", "b answers worse");
  const before = await page.textContent("#status");
  await page.click("#rollback");
  await until("the request sent", (earlier) => {
    const status = document.querySelector("#status").textContent;
    return /^request \w+ sent$/.test(status) && status !== earlier;
  }, before);
  await until("the rollback on the timeline", () => {
    const row = document.querySelector('#moves tr[data-move="rollback"]');
    return row && row.children[3].textContent === "rollback: b answers worse" && row.children[4].textContent === "dashboard";
  });
  await until("the first model champion again", (a) =>
    document.querySelector('#aliases-at tr[data-alias="champion"] td.model')?.textContent === a, first);
  await shot("models");

  await show("serving");
  await until("three requests served by the second model", (b) =>
    document.querySelector(`#routes tr[data-route^="${b}"] td.requests`)?.textContent === "3", second);
  await shot("serving");

  // Messages: the served responses in Confluent framing, decoded; then a cycle's chain.
  await show("messages");
  await page.selectOption("#f-type", "response.served");
  await page.click('#filters button[type="submit"]');
  await until("three served responses by schema id", () =>
    document.querySelectorAll('#messages-list tr.message[data-framing="confluent"]').length === 3
    && document.querySelectorAll("#messages-list tr.message").length === 3);
  await page.click("#messages-list tr.message");
  await until("the decoded event", () =>
    [...document.querySelectorAll("#messages-list tr.detail:not([hidden]) pre")].some((p) => p.textContent.includes('"prompt_tokens": 12')));
  await show("models");
  await page.click(`#versions tr[data-version="${first}"] a`);
  await until("the cycle's chain, oldest first", () => {
    const types = [...document.querySelectorAll("#messages-list tr.message td.type")].map((t) => t.textContent.trim());
    return /causal chain/.test(document.querySelector("#chain-title").textContent)
      && types[0] === "model.trained" && types.some((t) => t.endsWith("eval.completed"));
  });
  await shot("messages");

  await show("schemas");
  await until("the registry's subjects", () => {
    const row = document.querySelector('#subjects tr[data-subject="feedback.received-value"]');
    return row && row.children[5].textContent === "yes" && row.children[2].textContent === "1";
  });
  await shot("schemas");

  await browser.close();
  if (problems.length) throw new Error(`console errors: ${problems.join(" | ")}`);
  console.log("DONE");
}

main().catch((e) => { console.error(e); process.exit(1); });
