/**
 * The timing protocol of `python -m benchmarks.runtimes`, as JavaScript runs it: the Node runner
 * (runtime_bench.mjs) and the browser page (bench_page.mjs) both time their decoders here, and
 * benchmarks/runtimes_python.py follows the same steps in Python. A model is loaded, started
 * (startDecoder), then timed in bursts (timeBurst), which the harness interleaves across
 * runtimes.
 *
 * A decoder is `{reset(), prefill(ids), step(id)}` over one causal LM: prefill feeds the prompt
 * in one call from an empty state, step feeds one token after it. Times are in milliseconds,
 * taken with performance.now(); the Python side reduces them to medians.
 *
 * @module measure
 */

/**
 * The token ids every runtime feeds (their values do not change the work the graph does).
 * @param {number} count how many
 * @param {number} vocabSize ids lie in [0, vocabSize)
 * @param {number} [start=0] index of the first id in the sequence
 * @returns {number[]} shape (count,)
 */
export function tokenIds(count, vocabSize, start = 0) {
  return Array.from({ length: count }, (_, i) => (7 * (start + i) + 3) % vocabSize);
}

async function elapsedMs(work) {
  const start = performance.now();
  await work();
  return performance.now() - start;
}

/**
 * Time `repeats` loads; the first pays what only a first load does (module and wasm start-up).
 * @param {() => Promise<object>} load makes a model or session
 * @param {number} repeats >= 1
 * @returns {Promise<{loadMs: number[], loaded: object}>} each load's time, and the last model
 */
async function timeLoads(load, repeats) {
  const loadMs = [];
  let loaded;
  for (let i = 0; i < repeats; i++) {
    loadMs.push(await elapsedMs(async () => (loaded = await load())));
  }
  return { loadMs, loaded };
}

/** Reset `decoder` and prefill `prefill` ids from the empty state; the prefill's time. */
function prefillOnce(decoder, { prefill, vocabSize }) {
  decoder.reset();
  return elapsedMs(() => decoder.prefill(tokenIds(prefill, vocabSize)));
}

/** `count` decode steps after a prefill: each step's time, and their wall time together. */
async function decodeSteps(decoder, { prefill, vocabSize }, count) {
  const stepMs = [];
  const began = performance.now();
  for (const id of tokenIds(count, vocabSize, prefill)) {
    stepMs.push(await elapsedMs(() => decoder.step(id)));
  }
  return { stepMs, decodeMs: performance.now() - began };
}

/**
 * The start of the timing protocol, on a freshly loaded model: the cold sequence (a prefill
 * and `steps` steps: a user's first tokens), then more sequences, untimed, until `warmupMs`
 * have passed since it began. A wasm engine optimizes hot code in background threads
 * meanwhile, taking cores from the page for seconds.
 * @param {{reset: Function, prefill: Function, step: Function}} decoder
 * @param {{prefill: number, steps: number, warmupMs: number, vocabSize: number}} plan
 * @returns {Promise<{cold_prefill_ms: number, cold_step_ms: number[],
 *   warmup_sequences: number}>}
 */
export async function startDecoder(decoder, plan) {
  const began = performance.now();
  const coldPrefill = await prefillOnce(decoder, plan);
  const cold = await decodeSteps(decoder, plan, plan.steps);
  let sequences = 0;
  while (performance.now() - began < plan.warmupMs) {
    await prefillOnce(decoder, plan);
    await decodeSteps(decoder, plan, plan.steps);
    sequences += 1;
  }
  return { cold_prefill_ms: coldPrefill, cold_step_ms: cold.stepMs, warmup_sequences: sequences };
}

/**
 * One burst of the timing protocol: `prefills` timed prefills, each from an empty state (one
 * untimed where `prefills` is 0), then `steps` timed decode steps after the last.
 * @param {{reset: Function, prefill: Function, step: Function}} decoder
 * @param {{prefill: number, vocabSize: number}} plan
 * @param {{prefills: number, steps: number}} burst
 * @returns {Promise<{prefill_ms: number[], step_ms: number[], decode_ms: number}>} decode_ms:
 *   the steps' wall time together, gaps between them included
 */
export async function timeBurst(decoder, plan, { prefills, steps }) {
  const prefillMs = [];
  for (let i = 0; i < Math.max(prefills, 1); i++) {
    const ms = await prefillOnce(decoder, plan);
    if (i < prefills) prefillMs.push(ms);
  }
  const { stepMs, decodeMs } = await decodeSteps(decoder, plan, steps);
  return { prefill_ms: prefillMs, step_ms: stepMs, decode_ms: decodeMs };
}

/**
 * Load a model `plan.loads` times, start the last one and time one burst of
 * `plan.prefillRepeats` prefills and `plan.steps` steps.
 * @param {() => Promise<object>} load makes a model or session
 * @param {(loaded: object) => object} makeDecoder a decoder (with its vocabSize) on it
 * @param {{loads: number, prefill: number, prefillRepeats: number, steps: number,
 *   warmupMs: number}} plan
 * @returns {Promise<{report: object, burst: Function}>} report: load_ms and the keys of
 *   startDecoder and timeBurst; burst({prefills, steps}): more bursts on the same decoder
 */
export async function timeModel(load, makeDecoder, plan) {
  const { loadMs, loaded } = await timeLoads(load, plan.loads);
  const decoder = makeDecoder(loaded);
  const settings = { ...plan, vocabSize: decoder.vocabSize };
  const started = await startDecoder(decoder, settings);
  const first = await timeBurst(decoder, settings, {
    prefills: plan.prefillRepeats,
    steps: plan.steps,
  });
  return {
    report: { load_ms: loadMs, ...started, ...first },
    burst: (request) => timeBurst(decoder, settings, request),
  };
}

/**
 * favor-runtime's Generator as a decoder; the prompt goes in as one call.
 * @param {Function} Generator favor-runtime's Generator class
 * @param {object} model from favor-runtime's loadExport
 * @param {number} prefill the prompt length
 */
export function generatorDecoder(Generator, model, prefill) {
  const generator = new Generator(model, { prefillChunk: prefill });
  return {
    vocabSize: generator.vocabSize,
    reset: () => generator.reset(),
    prefill: (ids) => generator.prefill(ids),
    step: (id) => generator.step(id),
  };
}
