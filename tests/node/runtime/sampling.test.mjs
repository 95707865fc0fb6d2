// Sampling: its distribution against numpy's softmax, the seeded generator against SplitMix64
// computed in Python, reproducible streams, and the float16 decoding logits go through.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  Generator,
  Rng,
  checkSampling,
  float16ToFloat32,
  sampleToken,
} from "../../../runtime/js/favor-runtime.mjs";
import { cases, model } from "./helpers.mjs";

const DRAWS = 40000;

describe("draws follow the distribution numpy computes from the logits", () => {
  for (const c of cases.sampler) {
    test(c.id, () => {
      const rng = new Rng(2024);
      const counts = new Array(c.logits.length).fill(0);
      for (let i = 0; i < DRAWS; i++) counts[sampleToken(c.logits, c.options, rng)] += 1;
      c.probs.forEach((p, id) => {
        const frequency = counts[id] / DRAWS;
        // Five standard deviations of a binomial frequency: a wrong distribution is far out.
        const allowed = 5 * Math.sqrt((p * (1 - p)) / DRAWS);
        assert.ok(
          p === 0 ? counts[id] === 0 : Math.abs(frequency - p) <= allowed,
          `token ${id}: drawn ${frequency}, probability ${p}`,
        );
      });
    });
  }
});

test("top-k keeps every token tied at the cutoff, as the Python runtime does", () => {
  const rng = new Rng(5);
  const seen = new Set();
  for (let i = 0; i < 200; i++)
    seen.add(sampleToken([0, 2, 2, 1], { temperature: 1, topK: 1 }, rng));
  assert.deepEqual([...seen].sort(), [1, 2]);
});

test("temperature 0 is the first of equal maxima, like numpy's argmax", () => {
  assert.equal(sampleToken([1, 3, 3, 2]), 1);
  assert.equal(sampleToken(Float32Array.of(-5, -1, -1), { temperature: 0 }), 1);
});

test("a temperature too small for the scaled logits is greedy", () => {
  assert.equal(sampleToken([1, 3, 2.5], { temperature: 1e-310 }, new Rng(1)), 1);
});

test("logits holding NaN are an error", () => {
  assert.throws(() => sampleToken([0, NaN, 1], { temperature: 1 }, new Rng(1)), {
    message: "logits hold NaN: the model's output is not a distribution",
  });
});

test("sampling options out of range are named", () => {
  const bad = [
    [{ temperature: NaN }, "temperature must be >= 0, got NaN"],
    [{ temperature: "1" }, 'temperature must be >= 0, got "1"'],
    [{ topK: 0 }, "topK must be a positive integer or undefined, got 0"],
    [{ topK: "3" }, 'topK must be a positive integer or undefined, got "3"'],
    [{ topP: -0.5 }, "topP must be in (0, 1] or undefined, got -0.5"],
  ];
  for (const [options, message] of bad) assert.throws(() => checkSampling(options), { message });
  checkSampling({ temperature: 0.7, topK: 5, topP: 1 });
});

describe("the generator is SplitMix64", () => {
  for (const c of cases.rng) {
    test(`seed ${c.seed}: outputs and uniforms as Python computes them`, () => {
      const rng = new Rng(BigInt(c.seed));
      assert.deepEqual(
        c.outputs.map(() => rng.nextUint64()),
        c.outputs.map(BigInt),
      );
      const again = new Rng(BigInt(c.seed));
      assert.deepEqual(
        c.uniforms.map(() => again.uniform()),
        c.uniforms,
      );
    });
  }
  test("a number seed is the same seed as a BigInt", () => {
    assert.equal(new Rng(1234567).nextUint64(), new Rng(1234567n).nextUint64());
  });
  test("bad seeds are named", () => {
    for (const seed of [-1, 1.5, 2n ** 64n, "1", Number.MAX_SAFE_INTEGER + 1]) {
      assert.throws(() => new Rng(seed), /^Error: seed must be an integer >= 0/, String(seed));
    }
  });
});

describe("seeded streams on the sample LM", () => {
  const c = cases.greedy.find((g) => g.ids.length >= 30);
  const sample = (options) =>
    model("char_lm").then((lm) =>
      new Generator(lm).generate(c.prompt, { maxNewTokens: 50, temperature: 1, ...options }),
    );

  test("the same seed gives the same ids, another seed others", async () => {
    const first = await sample({ seed: 0 });
    assert.equal(first.length, 50);
    assert.deepEqual(await sample({ seed: 0 }), first);
    assert.notDeepEqual(await sample({ seed: 1 }), first);
  });
  test("top-k 1 is greedy", async () => {
    const ids = await sample({ topK: 1, seed: 3, maxNewTokens: c.new });
    assert.deepEqual(ids, c.ids);
  });
  test("a tiny top-p is greedy", async () => {
    const ids = await sample({ topP: 1e-9, seed: 4, maxNewTokens: c.new });
    assert.deepEqual(ids, c.ids);
  });
  test("without a seed, draws are still token ids", async () => {
    const ids = await sample({ topK: 20, topP: 0.95, temperature: 0.8 });
    assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < 59));
  });
});

describe("float16 decoding", () => {
  test("known bit patterns", () => {
    const known = [
      [0x3c00, 1],
      [0xc000, -2],
      [0x7bff, 65504],
      [0x0001, 2 ** -24],
      [0x03ff, 1023 * 2 ** -24],
      [0x0400, 2 ** -14],
      [0x7c00, Infinity],
      [0xfc00, -Infinity],
      [0x7e00, NaN],
      [0x8000, -0],
    ];
    const decoded = float16ToFloat32(Uint16Array.from(known, ([bits]) => bits));
    known.forEach(([bits, value], i) => {
      assert.ok(Object.is(decoded[i], value), `0x${bits.toString(16)}: ${decoded[i]}`);
    });
  });
  test("every bit pattern as numpy reads it", () => {
    const decoded = float16ToFloat32(Uint16Array.from(cases.float16.keys()));
    const named = { inf: Infinity, "-inf": -Infinity, nan: NaN };
    cases.float16.forEach((want, bits) => {
      const value = typeof want === "string" ? named[want] : want;
      assert.ok(Object.is(decoded[bits], value), `0x${bits.toString(16)}: ${decoded[bits]}`);
    });
  });
});
