// The runtime on onnxruntime-web's wasm backend, as a page runs it: the export fetched over
// HTTP, the graph handed to onnxruntime as bytes.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import * as ort from "onnxruntime-web";
import { Generator, loadExport } from "../../../runtime/js/favor-runtime.mjs";
import { cases, serveFiles } from "./helpers.mjs";

// Threads would need SharedArrayBuffer, which pages rarely have.
ort.env.wasm.numThreads = 1;

describe("onnxruntime-web (wasm)", () => {
  let server;
  before(async () => {
    server = await serveFiles();
  });
  after(() => server.close());

  const load = (name) =>
    loadExport(ort, `${server.origin}${cases.dirs[name]}/`, {
      name: name === "char_lm" ? undefined : name,
      executionProviders: ["wasm"],
    });

  test("greedy ids equal the Python Generator's on the sample LM", async () => {
    const generator = new Generator(await load("char_lm"));
    for (const c of cases.greedy.slice(0, 3)) {
      assert.deepEqual(await generator.generate(c.prompt, { maxNewTokens: c.new }), c.ids, c.id);
    }
  });

  test("greedy ids equal the Python Generator's on an fp16 export", async () => {
    const generator = new Generator(await load("lm16"));
    for (const c of cases.fp16) {
      assert.deepEqual(await generator.generate(c.prompt, { maxNewTokens: c.new }), c.ids, c.id);
    }
  });
});
