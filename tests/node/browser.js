// Headless Debian Chromium through playwright-core (both installed by scripts/bootstrap), with
// the page's console errors and uncaught exceptions collected in `problems`.
"use strict";
const { chromium } = require(process.env.QUARK_NODE + "/node_modules/playwright-core");

async function open() {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(e.message));
  return { browser, page, problems };
}

module.exports = { open };
