/**
 * The browser side of `python -m benchmarks.runtimes`: loads a causal LM export with
 * favor-runtime on onnxruntime-web (wasm) and times it as the Node runner does (measure.mjs).
 *
 * URL parameters: model (the export's URL prefix, required), threads (onnxruntime-web's
 * numThreads, default 1), loads, prefill, prefillRepeats, steps, warmupMs. Writes one JSON
 * object into `#results` ({runtime, module, versions, variant, threads, threads_requested,
 * cross_origin_isolated, and measure.mjs's timeModel report}), then `#status` reads `done`, or
 * `error: <message>` after any failure. Once done, `window.benchBurst(prefills, steps)` times
 * one more burst (measure.mjs's timeBurst) for a driver that interleaves runtimes.
 */
import * as ort from "onnxruntime-web";
import { Generator, loadExport } from "/runtime/js/favor-runtime.mjs";
import { generatorDecoder, timeModel } from "./measure.mjs";

// Each count parameter: its default and least value.
const COUNTS = {
  threads: [1, 1],
  loads: [5, 1],
  prefill: [256, 1],
  prefillRepeats: [10, 1],
  steps: [200, 1],
  warmupMs: [3000, 0],
};

/**
 * The page's settings from its URL, checked.
 * @param {URLSearchParams} params
 * @returns {{model: string, threads: number, loads: number, prefill: number,
 *   prefillRepeats: number, steps: number, warmupMs: number}}
 */
function settings(params) {
  const model = params.get("model");
  if (!model) throw new Error("URL parameter model (the export's URL prefix) is required");
  const chosen = { model };
  for (const [name, [fallback, least]] of Object.entries(COUNTS)) {
    const text = params.get(name);
    const value = text === null ? fallback : Number(text);
    if (!Number.isInteger(value) || value < least) {
      throw new Error(`URL parameter ${name} must be a whole number >= ${least}, got ${text}`);
    }
    chosen[name] = value;
  }
  return chosen;
}

async function run() {
  const plan = settings(new URLSearchParams(location.search));
  // Fixed when the wasm module starts, at the first session; onnxruntime-web lowers it to 1
  // on a page that is not cross-origin isolated.
  ort.env.wasm.numThreads = plan.threads;
  const load = () => loadExport(ort, plan.model, { executionProviders: ["wasm"] });
  const makeDecoder = (model) => generatorDecoder(Generator, model, plan.prefill);
  const { report, burst } = await timeModel(load, makeDecoder, plan);
  window.benchBurst = (prefills, steps) => burst({ prefills, steps });
  return {
    runtime: "browser",
    module: "onnxruntime-web",
    versions: { ort: ort.env.versions.web, browser: navigator.userAgent },
    variant: "generator",
    threads: ort.env.wasm.numThreads,
    threads_requested: plan.threads,
    cross_origin_isolated: globalThis.crossOriginIsolated === true,
    ...report,
  };
}

const status = document.getElementById("status");
try {
  document.getElementById("results").textContent = JSON.stringify(await run());
  status.textContent = "done";
} catch (error) {
  status.textContent = `error: ${String(error?.message ?? error).split("\n")[0]}`;
}
