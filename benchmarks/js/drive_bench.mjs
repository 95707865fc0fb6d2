// Opens benchmark pages (bench.html) in headless Chromium, one after another, each in a page of
// its own, and reports what they measured:
//   node drive_bench.mjs URL [URL ...] [--chromium PATH] [--timeout MS] [--serve]
// Prints one JSON line: {browser (Chromium's version), pages: [{url, status, results, wasm,
// consoleErrors, pageErrors, timedOut}]}, where results is #results parsed (null if the page
// wrote none) and wasm the .wasm files the page fetched, [{url, bytes}]. Exits 0 whenever it
// could report: the caller judges the pages. With --serve the pages stay open, and each line
// read from stdin, {page, prefills, steps}, runs one more burst on page number `page`
// (window.benchBurst) and is answered with its result as a JSON line, until stdin ends.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

// playwright-core is installed for the tests, in tests/node.
const require = createRequire(new URL("../../tests/node/package.json", import.meta.url));
const { chromium } = require("playwright-core");

/**
 * The command line, checked.
 * @returns {{urls: string[], executablePath: string, timeout: number, serve: boolean}}
 */
function readArguments() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      chromium: { type: "string", default: "/usr/bin/chromium" },
      timeout: { type: "string", default: "120000" },
      serve: { type: "boolean", default: false },
    },
  });
  if (positionals.length === 0) {
    throw new Error(
      "usage: node drive_bench.mjs URL [URL ...] [--chromium PATH] [--timeout MS] [--serve]",
    );
  }
  const timeout = Number(values.timeout);
  if (!Number.isInteger(timeout) || timeout < 1) {
    throw new Error(`--timeout must be a whole number >= 1, got ${values.timeout}`);
  }
  return { urls: positionals, executablePath: values.chromium, timeout, serve: values.serve };
}

/**
 * In the page: resolves true once #status reads done or error, false after `timeout` ms. A
 * MutationObserver, not polling: no timer wakes the page's main thread while it measures.
 */
function whenFinished(timeout) {
  const status = document.getElementById("status");
  const finished = () => status.textContent === "done" || status.textContent.startsWith("error:");
  return new Promise((resolve) => {
    if (finished()) return resolve(true);
    const observer = new MutationObserver(() => {
      if (finished()) {
        observer.disconnect();
        resolve(true);
      }
    });
    observer.observe(status, { childList: true, characterData: true, subtree: true });
    setTimeout(() => resolve(false), timeout);
  });
}

function readPage() {
  const text = document.getElementById("results")?.textContent ?? "";
  return {
    status: document.getElementById("status")?.textContent ?? null,
    results: text ? JSON.parse(text) : null,
  };
}

/** Open `url` in a new page of `browser` and wait for it to finish; the page and its report. */
async function open(browser, url, timeout) {
  const page = await browser.newPage();
  const consoleErrors = [];
  const pageErrors = [];
  const wasm = [];
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => pageErrors.push(error.message));
  page.on("response", async (response) => {
    if (new URL(response.url()).pathname.endsWith(".wasm")) {
      wasm.push({ url: response.url(), bytes: (await response.body()).length });
    }
  });
  await page.goto(url, { timeout });
  const timedOut = !(await page.evaluate(whenFinished, timeout));
  const report = { url, ...(await page.evaluate(readPage)) };
  return { page, report: { ...report, wasm, consoleErrors, pageErrors, timedOut } };
}

/** Answer burst requests from stdin on `pages`, one JSON line each. */
async function serve(pages) {
  for await (const line of createInterface({ input: process.stdin })) {
    const { page, prefills, steps } = JSON.parse(line);
    const result = await pages[page].evaluate(([p, n]) => window.benchBurst(p, n), [
      prefills,
      steps,
    ]);
    console.log(JSON.stringify(result));
  }
}

async function main() {
  const args = readArguments();
  const browser = await chromium.launch({ executablePath: args.executablePath, headless: true });
  try {
    const opened = [];
    for (const url of args.urls) opened.push(await open(browser, url, args.timeout));
    const pages = opened.map(({ report }) => report);
    console.log(JSON.stringify({ browser: browser.version(), pages }));
    if (args.serve) await serve(opened.map(({ page }) => page));
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(`drive_bench: ${String(error?.message ?? error).split("\n")[0]}`);
  process.exit(1);
});
