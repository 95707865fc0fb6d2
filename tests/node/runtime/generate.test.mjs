// The Generator against the Python runtime's: greedy ids, chunked prefill, windows, fp16
// exports, argument errors, and refusing a second caller.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Generator } from "../../../runtime/js/favor-runtime.mjs";
import { assertClose, cases, load, model } from "./helpers.mjs";

function argmax(values) {
  return values.indexOf(Math.max(...values));
}

describe("greedy ids equal the Python Generator's on the sample LM", () => {
  for (const c of cases.greedy) {
    test(c.id, async () => {
      const generator = new Generator(await model("char_lm"));
      assert.deepEqual(await generator.generate(c.prompt, { maxNewTokens: c.new }), c.ids);
    });
  }
});

describe("greedy ids equal the Python Generator's on an fp16 export", () => {
  for (const c of cases.fp16) {
    test(c.id, async () => {
      const lm16 = await model("lm16");
      assert.equal(lm16.logitsOutput.dtype, "float16");
      const generator = new Generator(lm16);
      assert.deepEqual(await generator.generate(c.prompt, { maxNewTokens: c.new }), c.ids);
    });
  }
});

describe("a 1000-token prompt prefilled in chunks", () => {
  for (const chunk of [64, 100]) {
    test(`chunks of ${chunk} give one call's last logits and its greedy ids`, async () => {
      const lm = await load(cases.dirs.char_lm);
      const lengths = [];
      const run = lm.session.run.bind(lm.session);
      lm.session.run = (feeds) => {
        lengths.push(feeds.tokens.dims[1]);
        return run(feeds);
      };
      const generator = new Generator(lm, { prefillChunk: chunk });
      const { prompt, logits, ids } = cases.long;
      const last = await generator.prefill(prompt);
      assert.ok(last instanceof Float32Array);
      assertClose(Array.from(last), logits, { atol: 1e-4 }, "last logits");
      assert.equal(generator.position, prompt.length);
      const sizes = Array.from({ length: Math.ceil(prompt.length / chunk) }, (_, i) =>
        Math.min(chunk, prompt.length - i * chunk),
      );
      assert.deepEqual(lengths, sizes);
      assert.deepEqual(await generator.generate(prompt, { maxNewTokens: cases.long.new }), ids);
    });
  }
});

test("a window rebuilds the state as the Python Generator does", async () => {
  const generator = new Generator(await model("char_lm"));
  const { prompt, new: maxNewTokens, window, ids } = cases.window;
  assert.deepEqual(await generator.generate(prompt, { maxNewTokens, window }), ids);
});

test("prefill and step give the logits generate chooses from", async () => {
  const c = cases.greedy.find((g) => g.prompt.length === 63);
  const generator = new Generator(await model("char_lm"));
  let logits = await generator.prefill(c.prompt);
  for (const [index, id] of c.ids.slice(0, 5).entries()) {
    assert.equal(argmax(logits), id, `token ${index}`);
    logits = await generator.step(id);
    assert.equal(generator.position, c.prompt.length + index + 1);
  }
  generator.reset();
  assert.equal(generator.position, 0);
});

test("stop ends generation before the stop token", async () => {
  const c = cases.greedy.find((g) => g.ids.length >= 30);
  const stop = c.ids[10];
  const generator = new Generator(await model("char_lm"));
  const ids = await generator.generate(c.prompt, { maxNewTokens: c.new, stop: [stop, 58] });
  assert.deepEqual(ids, c.ids.slice(0, c.ids.indexOf(stop)));
});

test("stream yields ids one at a time and can be left early", async () => {
  const c = cases.greedy.find((g) => g.ids.length >= 30);
  const generator = new Generator(await model("char_lm"));
  const seen = [];
  for await (const id of generator.stream(c.prompt, { maxNewTokens: c.new })) {
    seen.push(id);
    if (seen.length === 7) break;
  }
  assert.deepEqual(seen, c.ids.slice(0, 7));
  assert.deepEqual(await generator.generate([1], { maxNewTokens: 0 }), []);
});

test("a Generator in use refuses a second call", async () => {
  const generator = new Generator(await model("char_lm"));
  const busy = { message: /^this Generator is already in use/ };
  const pending = generator.prefill([1, 2, 3]);
  await assert.rejects(generator.step(4), busy);
  assert.throws(() => generator.reset(), busy);
  await pending;
  const stream = generator.stream([1, 2], { maxNewTokens: 5 });
  await stream.next();
  await assert.rejects(generator.generate([1], { maxNewTokens: 1 }), busy);
  await stream.return();
  assert.equal((await generator.generate([1], { maxNewTokens: 2 })).length, 2);
});

test("a failed call must be followed by reset()", async () => {
  const lm = await load(cases.dirs.char_lm);
  const generator = new Generator(lm);
  lm.session.run = async () => {
    throw new Error("device lost");
  };
  await assert.rejects(generator.prefill([1]), { message: "decode step failed: device lost" });
  delete lm.session.run;
  await assert.rejects(generator.step(1), {
    message: "this Generator failed earlier (device lost); call reset() before using it again",
  });
  generator.reset();
  assert.equal((await generator.prefill([1])).length, 59);
});

describe("bad arguments fail with the Python runtime's messages", () => {
  for (const c of cases.generatorErrors) {
    test(c.id, async () => {
      const lm = await model(c.model);
      const { prompt, new: maxNewTokens, tokens, token, ...options } = c.args;
      const calls = {
        construct: async () => new Generator(lm, options),
        prefill: () => new Generator(lm).prefill(tokens),
        step: () => new Generator(lm).step(token),
        generate: () => new Generator(lm).generate(prompt, { maxNewTokens, ...options }),
      };
      await assert.rejects(calls[c.call], { message: c.message });
    });
  }
});

test("token ids must be a sequence of integers", async () => {
  const generator = new Generator(await model("char_lm"));
  const message = "tokens must be a non-empty 1-D sequence of integer token ids";
  for (const tokens of [[1.5], "abc", 3, [[1, 2]], undefined]) {
    await assert.rejects(generator.prefill(tokens), { message }, JSON.stringify(tokens));
  }
  assert.equal((await generator.prefill(BigInt64Array.of(1n, 2n))).length, 59);
  assert.equal((await generator.prefill(Int32Array.of(3))).length, 59);
  assert.equal(generator.position, 3);
});

test("a Generator needs a model from loadExport", () => {
  assert.throws(() => new Generator({ kind: "causal-lm" }), /needs a model from loadExport/);
});
