// What the runtime's node tests share: the cases tests/runtime/test_js_runtime.py computed with
// the Python runtime, loading exports on onnxruntime-node, and tensors built from the cases.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import * as ort from "onnxruntime-node";
import { float16ToFloat32, loadExport } from "../../../runtime/js/favor-runtime.mjs";

export { ort };

/** The case file named by FAVOR_JS_CASES (written by tests/runtime/test_js_runtime.py). */
export const cases = await readCases();

async function readCases() {
  const file = process.env.FAVOR_JS_CASES;
  if (!file) {
    throw new Error(
      "FAVOR_JS_CASES is not set: run these tests through pytest tests/runtime/test_js_runtime.py",
    );
  }
  return JSON.parse(await readFile(file, "utf8"));
}

/**
 * loadExport on onnxruntime-node with one intra-op thread (the test machines are small).
 * @param {string} source an export directory, manifest or URL
 * @param {object} [options] loadExport's options
 */
export function load(source, options = {}) {
  const sessionOptions = { intraOpNumThreads: 1, ...options.sessionOptions };
  return loadExport(ort, source, { ...options, sessionOptions });
}

const cache = new Map();

/** The export `cases.dirs[name]`, loaded once per test file. */
export function model(name) {
  if (!cache.has(name)) cache.set(name, load(cases.dirs[name]));
  return cache.get(name);
}

const ARRAYS = {
  float32: Float32Array,
  float64: Float64Array,
  int32: Int32Array,
  int64: BigInt64Array,
  bool: Uint8Array,
};

/**
 * An ort.Tensor from a case's tensor: `{dtype, shape, values}`, values row-major (zeros where
 * absent).
 */
export function tensor({ dtype, shape, values }) {
  const size = shape.reduce((a, b) => a * b, 1);
  const data = new ARRAYS[dtype](size);
  (values ?? []).forEach((v, i) => {
    data[i] = dtype === "int64" ? BigInt(v) : Number(v);
  });
  return new ort.Tensor(dtype, data, shape);
}

/** A tensor's values as numbers: float16 decoded, int64 converted. */
export function numbers(value) {
  if (value.type === "float16" && value.data instanceof Uint16Array) {
    return Array.from(float16ToFloat32(value.data));
  }
  return Array.from(value.data, Number);
}

/**
 * Assert `actual` and `expected` (arrays of numbers) agree elementwise within
 * `atol + rtol * |expected|`, naming the worst element.
 */
export function assertClose(actual, expected, { atol, rtol = 0 }, what) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let worst = -1;
  let excess = 0;
  for (let i = 0; i < expected.length; i++) {
    const gap = Math.abs(actual[i] - expected[i]) - (atol + rtol * Math.abs(expected[i]));
    const over = Number.isNaN(gap) ? Infinity : gap;
    if (over > excess) {
      worst = i;
      excess = over;
    }
  }
  assert.ok(
    worst < 0,
    `${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} (atol ${atol}, rtol ${rtol})`,
  );
}

/**
 * An HTTP server on 127.0.0.1 serving any file by its absolute path (the URL path is the
 * file's path), as a page's server would serve an export.
 * @returns {Promise<{origin: string, close: () => void}>}
 */
export async function serveFiles() {
  const server = createServer(async (request, response) => {
    try {
      const body = await readFile(decodeURIComponent(new URL(request.url, "http://x").pathname));
      response.writeHead(200).end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}
