// Times one causal LM export on an onnxruntime module under Node, as benchmarks/runtimes.py asks:
//   node runtime_bench.mjs --ort MODULE --export DIR [--variant generator|bare] [--threads N]
//        [--session-options JSON] [--loads N] [--prefill N] [--prefill-repeats N] [--steps N]
//        [--warmup-ms MS] [--serve]
// MODULE is a package name or path (onnxruntime-node, or onnxruntime-web for its wasm backend).
// The generator variant runs favor-runtime's loadExport and Generator; bare runs
// InferenceSession.create and session.run with the feeds the Generator would build, the state
// wired by the manifest but nothing checked. --threads 0 leaves onnxruntime's default. The
// timing protocol is measure.mjs's. Prints one JSON line: {runtime, module, versions, variant,
// threads, session_options, and timeModel's report}. With --serve it then reads burst requests
// from stdin, one JSON line each ({prefills, steps}), and answers each with a JSON line of
// timeBurst's result, until stdin ends.
import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { Generator, loadExport } from "../../runtime/js/favor-runtime.mjs";
import { generatorDecoder, timeModel } from "./measure.mjs";

const VARIANTS = ["generator", "bare"];
// Each count option and its least value.
const COUNTS = {
  threads: 0,
  loads: 1,
  prefill: 1,
  "prefill-repeats": 1,
  steps: 1,
  "warmup-ms": 0,
};

/**
 * The command line, checked.
 * @returns {{ort: string, export: string, variant: string, threads: number, loads: number,
 *   prefill: number, prefillRepeats: number, steps: number, warmupMs: number,
 *   sessionOptions: object, serve: boolean}}
 */
function readArguments() {
  const { values } = parseArgs({
    options: {
      ort: { type: "string" },
      export: { type: "string" },
      variant: { type: "string", default: "generator" },
      threads: { type: "string", default: "0" },
      "session-options": { type: "string", default: "{}" },
      loads: { type: "string", default: "5" },
      prefill: { type: "string", default: "256" },
      "prefill-repeats": { type: "string", default: "10" },
      steps: { type: "string", default: "200" },
      "warmup-ms": { type: "string", default: "3000" },
      serve: { type: "boolean", default: false },
    },
  });
  if (!values.ort || !values.export) throw new Error("--ort MODULE and --export DIR are required");
  if (!VARIANTS.includes(values.variant)) {
    throw new Error(`--variant must be one of ${VARIANTS.join(", ")}, got ${values.variant}`);
  }
  const counts = {};
  for (const [name, least] of Object.entries(COUNTS)) {
    const value = Number(values[name]);
    if (!Number.isInteger(value) || value < least) {
      throw new Error(`--${name} must be a whole number >= ${least}, got ${values[name]}`);
    }
    counts[name] = value;
  }
  let sessionOptions;
  try {
    sessionOptions = JSON.parse(values["session-options"]);
  } catch (error) {
    throw new Error(`--session-options must be a JSON object: ${error.message}`);
  }
  return {
    ort: values.ort,
    export: values.export,
    variant: values.variant,
    threads: counts.threads,
    loads: counts.loads,
    prefill: counts.prefill,
    prefillRepeats: counts["prefill-repeats"],
    steps: counts.steps,
    warmupMs: counts["warmup-ms"],
    sessionOptions,
    serve: values.serve,
  };
}

/** The onnxruntime module `spec` (a package name, or a path to its folder or entry file). */
async function importOrt(spec) {
  const require = createRequire(path.join(process.cwd(), "index.js"));
  const request = existsSync(spec) ? path.resolve(spec) : spec;
  const loaded = await import(pathToFileURL(require.resolve(request)).href);
  // A CommonJS package's exports may arrive as the namespace's default.
  return loaded.InferenceSession ? loaded : loaded.default;
}

/** The export's manifest, read as plain JSON (the bare variant checks nothing). */
async function readManifest(directory) {
  const names = (await readdir(directory)).filter((f) => f.endsWith(".manifest.json"));
  if (names.length !== 1) {
    throw new Error(`${directory} must hold exactly one *.manifest.json, found ${names.length}`);
  }
  return JSON.parse(await readFile(path.join(directory, names[0]), "utf8"));
}

const ARRAYS = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array };

function ids(dtype, values) {
  return dtype === "int64" ? BigInt64Array.from(values, BigInt) : Int32Array.from(values);
}

/**
 * A decoder on `session.run` alone: per call, a tokens tensor (1, L) and the previous call's
 * outputs as the state, as favor-runtime's Generator feeds them, without its checks.
 */
function bareDecoder(ort, session, manifest) {
  const carried = new Set(manifest.state.map((entry) => entry.input));
  const returned = new Set(manifest.state.map((entry) => entry.output));
  const tokens = manifest.inputs.find((entry) => !carried.has(entry.name));
  const logits = manifest.outputs.find((entry) => !returned.has(entry.name));
  const zeros = () =>
    Object.fromEntries(
      manifest.state.map(({ input }) => {
        const entry = manifest.inputs.find((e) => e.name === input);
        const dims = entry.shape.map((d) => (typeof d === "string" ? 1 : d));
        const data = new ARRAYS[entry.dtype](dims.reduce((a, b) => a * b, 1));
        return [input, new ort.Tensor(entry.dtype, data, dims)];
      }),
    );
  let state;
  const call = async (values) => {
    const feeds = { ...state };
    feeds[tokens.name] = new ort.Tensor(tokens.dtype, ids(tokens.dtype, values), [
      1,
      values.length,
    ]);
    const outputs = await session.run(feeds);
    state = Object.fromEntries(manifest.state.map((e) => [e.input, outputs[e.output]]));
    return outputs[logits.name].data;
  };
  return {
    vocabSize: tokens.range?.[1] ?? logits.shape.at(-1),
    reset: () => {
      state = zeros();
    },
    prefill: call,
    step: (id) => call([id]),
  };
}

async function main() {
  const args = readArguments();
  const ort = await importOrt(args.ort);
  const web = Boolean(ort.env.versions?.web);
  const sessionOptions = { ...args.sessionOptions };
  if (web) {
    ort.env.wasm.numThreads = Math.max(args.threads, 1);
    sessionOptions.executionProviders = ["wasm"];
  } else if (args.threads > 0) {
    sessionOptions.intraOpNumThreads = args.threads;
  }
  let load;
  let decoder;
  if (args.variant === "generator") {
    load = () => loadExport(ort, args.export, { sessionOptions });
    decoder = (model) => generatorDecoder(Generator, model, args.prefill);
  } else {
    const manifest = await readManifest(args.export);
    const onnx = path.join(args.export, manifest.files.onnx.path);
    load = () => ort.InferenceSession.create(onnx, sessionOptions);
    decoder = (session) => bareDecoder(ort, session, manifest);
  }
  const { report, burst } = await timeModel(load, decoder, args);
  const meta = {
    runtime: "node",
    module: web ? "onnxruntime-web" : "onnxruntime-node",
    versions: { ort: ort.env.versions?.[web ? "web" : "node"], node: process.versions.node },
    variant: args.variant,
    threads: web ? ort.env.wasm.numThreads : args.threads,
    session_options: sessionOptions,
  };
  console.log(JSON.stringify({ ...meta, ...report }));
  if (!args.serve) return;
  for await (const line of createInterface({ input: process.stdin })) {
    const { prefills, steps } = JSON.parse(line);
    console.log(JSON.stringify(await burst({ prefills, steps })));
  }
}

main().catch((error) => {
  console.error(`runtime_bench: ${String(error?.message ?? error).split("\n")[0]}`);
  process.exit(1);
});
