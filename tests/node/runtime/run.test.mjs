// model.run against the Python Session.run: outputs of each kind of export, the zero state,
// and bad feeds refused with the Python runtime's messages.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { assertClose, cases, model, numbers, ort, tensor } from "./helpers.mjs";

// onnxruntime-node and the Python onnxruntime are different builds: their float rounding
// differs, by about one unit of the last place in float16.
const TOLERANCE = {
  float32: { atol: 1e-4, rtol: 1e-4 },
  float16: { atol: 2e-3, rtol: 2e-3 },
  int64: { atol: 0 },
};

describe("run() gives Session.run's outputs, state carried between calls", () => {
  for (const c of cases.run) {
    test(c.id, async () => {
      const lm = await model(c.model);
      let state = lm.initialState(c.batch);
      for (const [index, call] of c.calls.entries()) {
        const given = Object.entries(call.feeds).map(([name, value]) => [name, tensor(value)]);
        const out = await lm.run({ ...state, ...Object.fromEntries(given) });
        assert.deepEqual(Object.keys(out).sort(), Object.keys(call.outputs).sort());
        for (const [name, want] of Object.entries(call.outputs)) {
          const what = `call ${index}, ${name}`;
          assert.equal(out[name].type, want.dtype, what);
          assert.deepEqual(out[name].dims, want.shape, what);
          assertClose(numbers(out[name]), want.values, TOLERANCE[want.dtype], what);
        }
        state = Object.fromEntries(lm.state.map(({ input, output }) => [input, out[output]]));
      }
    });
  }
});

test("initialState is zeros of each state input's dtype and shape, batch filled in", async () => {
  const lm = await model("char_lm");
  const dir = cases.dirs.char_lm;
  const manifest = JSON.parse(await readFile(join(dir, "char_lm.manifest.json"), "utf8"));
  const state = lm.initialState(3);
  assert.deepEqual(
    Object.keys(state),
    manifest.state.map((s) => s.input),
  );
  for (const { input } of manifest.state) {
    const entry = manifest.inputs.find((e) => e.name === input);
    assert.equal(state[input].type, entry.dtype);
    assert.deepEqual(
      state[input].dims,
      entry.shape.map((d) => (d === "batch" ? 3 : d)),
    );
    assert.ok(numbers(state[input]).every((v) => v === 0));
  }
  assert.equal(state["state.offsets"].data.constructor, BigInt64Array);
  assert.deepEqual((await model("module")).initialState(2), {});
  assert.throws(() => lm.initialState(0), { message: "batch must be a positive integer, got 0" });
});

/** Valid feeds of one sequence of three tokens, as test_js_runtime.py builds them. */
function baseFeeds(lm) {
  const feeds = { tokens: tensor({ dtype: "int64", shape: [1, 3], values: [1, 2, 3] }) };
  if (lm.kind === "encoder") feeds.key_padding_mask = tensor({ dtype: "bool", shape: [1, 3] });
  return { ...feeds, ...lm.initialState(1) };
}

function changed(feeds, change) {
  const result = { ...feeds };
  if (change.add) result[change.add] = tensor({ dtype: "int64", shape: [1] });
  else if (change.drop) delete result[change.drop];
  else result[change.set] = tensor(change);
  return result;
}

describe("bad feeds fail with the Python runtime's messages", () => {
  for (const c of cases.feedErrors) {
    test(c.id, async () => {
      const lm = await model(c.model);
      await assert.rejects(lm.run(changed(baseFeeds(lm), c.change)), { message: c.message });
    });
  }
});

test("feeds must be ort.Tensor values", async () => {
  const lm = await model("char_lm");
  await assert.rejects(lm.run({ ...baseFeeds(lm), tokens: [[1, 2, 3]] }), {
    message: "input 'tokens' must be an ort.Tensor, got an Array",
  });
  await assert.rejects(lm.run(null), {
    message: "feeds must be an object of ort.Tensor by input name, got null",
  });
});

test("int64 token ids are compared exactly, however large", async () => {
  const lm = await model("char_lm");
  const huge = new ort.Tensor("int64", BigInt64Array.of(1n, 2n ** 62n), [1, 2]);
  await assert.rejects(lm.run({ ...baseFeeds(lm), tokens: huge }), {
    message: `input 'tokens' holds token id ${2n ** 62n}, outside the vocabulary [0, 59)`,
  });
});
