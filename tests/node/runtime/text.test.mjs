// model.text: a character vocabulary from the export, against the vocabulary file itself and
// the Python runtime's messages.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Generator } from "../../../runtime/js/favor-runtime.mjs";
import { cases, load, model } from "./helpers.mjs";

describe("a character vocabulary", () => {
  for (const text of ["The sea", "A FIELD GUIDE TO THE SALLOW COAST\n", "?!'\"- x"]) {
    test(`encodes and decodes ${JSON.stringify(text)}`, async () => {
      const { text: vocabulary } = await model("char_lm");
      const ids = [...text].map((c) => cases.vocab.indexOf(c));
      assert.deepEqual(vocabulary.encode(text), ids);
      assert.equal(vocabulary.decode(ids), text);
    });
  }

  test("names the characters outside it as the Python runtime does", async () => {
    const { text } = await model("char_lm");
    assert.throws(() => text.encode(cases.outsideVocabulary.text), {
      message: cases.outsideVocabulary.message,
    });
  });

  test("refuses ids outside it", async () => {
    const { text } = await model("char_lm");
    assert.throws(() => text.decode([1, 59]), {
      message: "token id 59 is outside the text's vocabulary [0, 59)",
    });
    assert.equal(text.decode([10n, 11n]), "AB");
  });

  test("feeds the Generator", async () => {
    const lm = await model("char_lm");
    const c = cases.greedy.find((g) => g.prompt.length === 65);
    const prompt = lm.text.decode(c.prompt);
    const ids = await new Generator(lm).generate(lm.text.encode(prompt), { maxNewTokens: c.new });
    assert.equal(lm.text.decode(ids), c.ids.map((id) => cases.vocab[id]).join(""));
  });
});

describe("model.text is null", () => {
  for (const name of ["textless", "tokenizer", "lm"]) {
    test(`for ${name}`, async () => {
      assert.equal((await model(name)).text, null);
    });
  }
});

describe("bad vocabulary files fail with the Python runtime's messages", () => {
  for (const c of cases.textErrors) {
    test(c.id, async () => {
      await assert.rejects(load(c.dir), { name: "ManifestError", message: c.message });
    });
  }
});
