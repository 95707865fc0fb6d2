/**
 * The demo page's logic: load a favor-export causal LM with onnxruntime-web (wasm) and stream
 * text from it.
 *
 * URL parameters (all optional; README.md lists them): model, vocab, prompt, n, greedy,
 * temperature, topk, seed, window, threads. With `prompt` in the URL the page generates on load.
 * What automation reads: `#ids` holds the new token ids as JSON, `#status` reads `done` once
 * they are all there, or `error: <message>` after any failure.
 */

const RUNTIME_URL = "/runtime/js/favor-runtime.mjs";
const DEFAULT_MODEL = "/build/char_lm/";
// The sample LM was trained on 256-character windows and degrades on longer histories; the
// runtime then rebuilds the state from the last half window (as samples/char_lm/app.py does).
const DEFAULT_WINDOW = 256;
// The page repaints at most this often while tokens stream: each repaint costs a macrotask.
const PAINT_INTERVAL_MS = 50;

const element = (id) => document.getElementById(id);

/**
 * A number read from text, checked.
 * @param {string} text the text typed or given in the URL
 * @param {string} what how the error names it, e.g. "URL parameter n"
 * @param {{integer?: boolean, min?: number}} [limits]
 * @returns {number}
 */
function readNumber(text, what, { integer = false, min = 0 } = {}) {
  const value = Number(text);
  const ok = text.trim() !== "" && Number.isFinite(value) && value >= min;
  if (!ok || (integer && !Number.isInteger(value))) {
    const kind = integer ? "a whole number" : "a number";
    throw new Error(`${what} must be ${kind} >= ${min}, got ${JSON.stringify(text)}`);
  }
  return value;
}

/**
 * The page's settings from its URL; a parameter left out is undefined (the form's value holds).
 * @param {URLSearchParams} params
 * @returns {{model: string, vocab: string | null, prompt: string | null, maxNewTokens?: number,
 *   temperature?: number, topK?: number, seed?: number, window?: number, threads: number}}
 */
function urlSettings(params) {
  const number = (name, limits) =>
    params.has(name) ? readNumber(params.get(name), `URL parameter ${name}`, limits) : undefined;
  const greedy = params.get("greedy");
  if (greedy !== null && greedy !== "0" && greedy !== "1") {
    throw new Error(`URL parameter greedy must be 0 or 1, got ${JSON.stringify(greedy)}`);
  }
  return {
    model: params.get("model") || DEFAULT_MODEL,
    vocab: params.get("vocab"),
    prompt: params.get("prompt"),
    maxNewTokens: number("n", { integer: true, min: 1 }),
    temperature: greedy === "1" ? 0 : number("temperature"),
    topK: number("topk", { integer: true, min: 1 }),
    seed: number("seed", { integer: true }),
    // 0: the whole history stays in the state.
    window: (number("window", { integer: true }) ?? DEFAULT_WINDOW) || undefined,
    threads: number("threads", { integer: true, min: 1 }) ?? 1,
  };
}

/** Copy the settings the URL gives into the form. */
function showSettings(settings) {
  const fields = {
    prompt: settings.prompt,
    temperature: settings.temperature,
    topk: settings.topK,
    "max-tokens": settings.maxNewTokens,
  };
  for (const [id, value] of Object.entries(fields)) {
    if (value !== null && value !== undefined) element(id).value = String(value);
  }
}

/**
 * What the form asks for, checked.
 * @returns {{prompt: string, temperature: number, topK: number, maxNewTokens: number}}
 */
function formSettings() {
  return {
    prompt: element("prompt").value,
    temperature: readNumber(element("temperature").value, "temperature"),
    topK: readNumber(element("topk").value, "top-k", { integer: true, min: 1 }),
    maxNewTokens: readNumber(element("max-tokens").value, "max new tokens", {
      integer: true,
      min: 1,
    }),
  };
}

/**
 * onnxruntime-web, with its wasm threads set. More than one thread needs SharedArrayBuffer,
 * which browsers give only to cross-origin isolated pages (COOP and COEP headers).
 * @param {number} wanted threads asked for
 * @returns {Promise<{ort: object, threads: number}>}
 */
async function loadOrt(wanted) {
  let ort;
  try {
    ort = await import("onnxruntime-web");
  } catch (error) {
    const hint = "run `npm ci --ignore-scripts` in samples/web";
    throw new Error(`cannot load onnxruntime-web (${error.message}); ${hint}`);
  }
  let threads = wanted;
  if (wanted > 1 && !globalThis.crossOriginIsolated) {
    threads = 1;
    showNotice(
      `threads=${wanted} needs a cross-origin isolated page (served with the headers ` +
        "Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: " +
        "require-corp); running on 1 thread.",
    );
  }
  ort.env.wasm.numThreads = threads;
  return { ort, threads };
}

/** The favor runtime's module, served from the repository root. */
async function loadRuntime() {
  try {
    return await import(RUNTIME_URL);
  } catch (error) {
    throw new Error(
      `cannot load ${RUNTIME_URL} (${error.message}); serve the repository root, not samples/web`,
    );
  }
}

/**
 * A character vocabulary as the runtime's `model.text`: token id = index in `characters`.
 * @param {unknown} characters the parsed JSON of a vocab file
 * @returns {{kind: string, encode: (text: string) => number[], decode: (ids: number[]) => string}}
 */
function characterText(characters) {
  const valid =
    Array.isArray(characters) &&
    characters.length > 0 &&
    characters.every((c) => typeof c === "string" && [...c].length === 1);
  if (!valid) throw new Error("the vocab file must be a JSON list of single characters");
  const index = new Map(characters.map((c, id) => [c, id]));
  return {
    kind: "characters",
    encode(text) {
      const unknown = [...new Set([...text].filter((c) => !index.has(c)))].sort();
      if (unknown.length > 0) {
        const listed = JSON.stringify(unknown.join(""));
        throw new Error(`the text has characters outside the vocabulary: ${listed}`);
      }
      return [...text].map((c) => index.get(c));
    },
    decode: (ids) => ids.map((id) => characters[id]).join(""),
  };
}

/**
 * The export's own text handling, or else the character list at `vocabUrl`.
 * @param {{text: object | null}} model
 * @param {string | null} vocabUrl
 */
async function textFor(model, vocabUrl) {
  if (model.text) return model.text;
  if (!vocabUrl) {
    throw new Error(
      "this export's manifest has no text entry; add vocab=<URL of a JSON list of characters> " +
        "to the page's URL",
    );
  }
  const response = await fetch(vocabUrl);
  if (!response.ok) throw new Error(`cannot fetch vocab ${vocabUrl}: HTTP ${response.status}`);
  return characterText(await response.json());
}

/** Let the browser repaint if it has not for a while (a macrotask; awaits alone never yield). */
async function paintNow(clock) {
  if (performance.now() - clock.lastPaint < PAINT_INTERVAL_MS) return;
  await new Promise((resolve) => setTimeout(resolve, 0));
  clock.lastPaint = performance.now();
}

function showStat(id, value, text) {
  element(id).dataset.value = String(value);
  element(id).textContent = text;
}

function clearStat(id) {
  delete element(id).dataset.value;
  element(id).textContent = "–";
}

function showNotice(message) {
  element("notice").textContent = message;
  element("notice").hidden = false;
}

function setStatus(text) {
  element("status").textContent = text;
  element("status").classList.toggle("error", text.startsWith("error:"));
}

function showError(error) {
  console.error(error);
  const message = error instanceof Error ? error.message : String(error);
  setStatus(`error: ${message.split("\n")[0]}`);
}

function setBusy(busy) {
  element("generate").disabled = busy;
  element("stop").disabled = !busy;
}

/**
 * Stream one completion of the form's prompt into the page.
 * @param {{Generator: Function}} runtime the favor runtime module
 * @param {object} model the loaded export
 * @param {{encode: Function, decode: Function}} text
 * @param {{seed?: number, window?: number}} settings what the URL adds to the form's settings
 * @param {{stopped: boolean}} control set `stopped` to end the stream early
 */
async function generate(runtime, model, text, settings, control) {
  const { prompt, temperature, topK, maxNewTokens } = formSettings();
  const promptIds = text.encode(prompt);
  if (promptIds.length === 0) throw new Error("the prompt is empty; type at least one character");
  element("prompt-echo").textContent = prompt;
  element("generated").textContent = "";
  element("ids").textContent = "[]";
  clearStat("first-token");
  clearStat("rate");
  setStatus("generating");

  const generator = new runtime.Generator(model);
  const { seed, window: historyWindow } = settings;
  const options = { maxNewTokens, temperature, topK, seed, window: historyWindow };
  const ids = [];
  const start = performance.now();
  const clock = { lastPaint: start };
  let first;
  for await (const id of generator.stream(promptIds, options)) {
    first ??= performance.now();
    ids.push(id);
    element("generated").textContent = text.decode(ids);
    element("ids").textContent = JSON.stringify(ids);
    if (control.stopped) break;
    await paintNow(clock);
  }
  const end = performance.now();
  if (first !== undefined) {
    showStat("first-token", first - start, `${(first - start).toFixed(0)} ms after Generate`);
  }
  // The decode rate: tokens after the first, each one graph call; the first also holds prefill.
  if (ids.length > 1) {
    const rate = ((ids.length - 1) * 1000) / (end - first);
    showStat("rate", rate, `${rate.toFixed(1)} tokens/s (${ids.length} tokens)`);
  }
  setStatus(control.stopped ? "stopped" : "done");
}

/** Load everything the URL names, wire the form, and generate at once if the URL has a prompt. */
async function main() {
  const settings = urlSettings(new URLSearchParams(location.search));
  showSettings(settings);
  const { ort, threads } = await loadOrt(settings.threads);
  showStat("threads", threads, String(threads));
  const runtime = await loadRuntime();
  setStatus(`loading ${settings.model}`);
  let model;
  try {
    model = await runtime.loadExport(ort, settings.model);
  } catch (error) {
    throw new Error(`cannot load the model at ${settings.model}: ${error.message}`);
  }
  const text = await textFor(model, settings.vocab);
  const ready = performance.now();
  showStat("load-time", ready, `ready ${ready.toFixed(0)} ms after the page opened`);

  const control = { stopped: false };
  const run = async () => {
    control.stopped = false;
    setBusy(true);
    try {
      await generate(runtime, model, text, settings, control);
    } catch (error) {
      showError(error);
    } finally {
      setBusy(false);
    }
  };
  element("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  element("stop").addEventListener("click", () => {
    control.stopped = true;
  });
  setStatus("ready");
  setBusy(false);
  if (settings.prompt !== null) await run();
}

window.addEventListener("unhandledrejection", (event) => showError(event.reason));
main().catch(showError);
