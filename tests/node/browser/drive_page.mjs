// Opens a page of the web demo in headless Chromium, waits for it to finish, and reports.
//   node drive_page.mjs URL --screenshot PNG [--timeout MS] [--chromium PATH]
//                       [--width PX] [--height PX]
// Waits until #status reads "done" or starts with "error:", then prints one JSON object:
//   {status, ids, text, stats, notice, consoleErrors, pageErrors, timedOut, elapsedMs}
// where ids is #ids parsed (null if it is not JSON), text the generated text (#generated), stats
// the numbers of the page's [data-stat] elements, and consoleErrors the console's error messages.
// Exits 0 whenever it could report, timed out or not: the caller judges the page.
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const USAGE =
  "usage: node drive_page.mjs URL --screenshot PNG [--timeout MS] [--chromium PATH] " +
  "[--width PX] [--height PX]";

/**
 * The command line, checked.
 * @returns {{url: string, screenshot: string, timeout: number, executablePath: string,
 *   width: number, height: number}}
 */
function readArguments() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      screenshot: { type: "string" },
      timeout: { type: "string", default: "30000" },
      chromium: { type: "string", default: "/usr/bin/chromium" },
      width: { type: "string", default: "1000" },
      height: { type: "string", default: "700" },
    },
  });
  if (positionals.length !== 1 || !values.screenshot) throw new Error(USAGE);
  const positive = (name) => {
    const value = Number(values[name]);
    if (!Number.isInteger(value) || value < 1) {
      throw new Error(`--${name} must be a whole number >= 1, got ${JSON.stringify(values[name])}`);
    }
    return value;
  };
  return {
    url: positionals[0],
    screenshot: values.screenshot,
    timeout: positive("timeout"),
    executablePath: values.chromium,
    width: positive("width"),
    height: positive("height"),
  };
}

/** What the page shows once it has finished (or given up waiting). */
function readPage() {
  const text = (id) => document.getElementById(id)?.textContent ?? null;
  let ids = null;
  try {
    ids = JSON.parse(text("ids"));
  } catch {
    // Left null: the caller sees the page never wrote valid ids.
  }
  const stats = {};
  for (const node of document.querySelectorAll("[data-stat]")) {
    if (node.dataset.value !== undefined) stats[node.dataset.stat] = Number(node.dataset.value);
  }
  const notice = document.getElementById("notice");
  return {
    status: text("status"),
    ids,
    text: text("generated"),
    stats,
    notice: notice && !notice.hidden ? notice.textContent : null,
  };
}

function finished() {
  const status = document.getElementById("status")?.textContent ?? "";
  return status === "done" || status.startsWith("error:");
}

async function main() {
  const args = readArguments();
  const browser = await chromium.launch({ executablePath: args.executablePath, headless: true });
  try {
    const page = await browser.newPage({
      viewport: { width: args.width, height: args.height },
      deviceScaleFactor: 1,
    });
    const consoleErrors = [];
    const pageErrors = [];
    page.on("console", (message) => {
      if (message.type() === "error") consoleErrors.push(message.text());
    });
    page.on("pageerror", (error) => pageErrors.push(error.message));

    const start = Date.now();
    await page.goto(args.url, { timeout: args.timeout });
    let timedOut = false;
    try {
      await page.waitForFunction(finished, null, { timeout: args.timeout, polling: 50 });
    } catch (error) {
      if (error.name !== "TimeoutError") throw error;
      timedOut = true;
    }
    const elapsedMs = Date.now() - start;
    const report = await page.evaluate(readPage);
    await page.screenshot({ path: args.screenshot });
    console.log(JSON.stringify({ ...report, consoleErrors, pageErrors, timedOut, elapsedMs }));
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(`drive_page: ${error.message.split("\n")[0]}`);
  process.exit(1);
});
