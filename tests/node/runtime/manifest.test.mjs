// Loading exports: from a directory, a manifest, an .onnx or a URL; broken or altered exports
// refused with the Python runtime's messages.
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Generator, ManifestError, loadExport } from "../../../runtime/js/favor-runtime.mjs";
import { cases, load, serveFiles } from "./helpers.mjs";

describe("broken exports fail with the Python runtime's messages", () => {
  for (const c of cases.manifestErrors) {
    test(c.id, async () => {
      const options = c.name === null ? {} : { name: c.name };
      await assert.rejects(load(c.dir, options), (error) => {
        assert.ok(error instanceof ManifestError, `${error.name}: ${error.message}`);
        assert.equal(error.message, c.message);
        return true;
      });
    });
  }
});

describe("an export is found from", () => {
  const dir = cases.dirs.lm;
  const sources = {
    "its directory": dir,
    "its directory with a trailing slash": `${dir}/`,
    "its manifest": join(dir, "lm.manifest.json"),
    "its .onnx": join(dir, "lm.onnx"),
    "its directory and name": [dir, { name: "lm" }],
  };
  for (const [what, source] of Object.entries(sources)) {
    test(what, async () => {
      const [path, options] = Array.isArray(source) ? source : [source, {}];
      const lm = await load(path, options);
      assert.equal(lm.manifest.name, "lm");
      assert.equal(lm.kind, "causal-lm");
      assert.deepEqual(
        lm.state.map((s) => [s.input, s.output]),
        lm.manifest.state.map((s) => [s.input, s.output]),
      );
    });
  }
});

test("an altered file is refused unless verify is false", async () => {
  await assert.rejects(load(cases.dirs.altered_text), { message: cases.alteredText });
  const lm = await load(cases.dirs.altered_text, { verify: false });
  assert.equal(lm.text.decode([10]), "A");
});

test("a graph whose dtypes differ from the manifest's is refused", async () => {
  const dir = await mkdtemp(join(tmpdir(), "favor-runtime-"));
  try {
    await cp(cases.dirs.lm, dir, { recursive: true });
    const path = join(dir, "lm.manifest.json");
    const manifest = JSON.parse(await readFile(path, "utf8"));
    manifest.inputs.find((e) => e.name === "state.0").dtype = "float64";
    await writeFile(path, JSON.stringify(manifest));
    await assert.rejects(load(dir), {
      name: "ManifestError",
      message: "the manifest says input 'state.0' is float64, the graph says float32",
    });
  } finally {
    await rm(dir, { recursive: true });
  }
});

test("loadExport needs the onnxruntime module and a proper name", async () => {
  await assert.rejects(loadExport({}, cases.dirs.lm), TypeError);
  await assert.rejects(load(cases.dirs.lm, { name: "" }), {
    message: 'name must be a non-empty string, got ""',
  });
});

test("session options and execution providers reach onnxruntime", async () => {
  const sessionOptions = { graphOptimizationLevel: "bogus" };
  await assert.rejects(load(cases.dirs.lm, { sessionOptions }), {
    name: "ManifestError",
    message: /^onnxruntime cannot load lm\.onnx: /,
  });
  await assert.rejects(load(cases.dirs.lm, { executionProviders: ["bogus"] }), {
    name: "ManifestError",
    message: /^onnxruntime cannot load lm\.onnx: .*bogus/,
  });
  assert.ok(await load(cases.dirs.lm, { executionProviders: ["cpu"] }));
});

describe("exports served over HTTP", () => {
  let server;
  before(async () => {
    server = await serveFiles();
  });
  after(() => server.close());

  const url = (dir, file = "") => `${server.origin}${dir}/${file}`;

  test("a prefix names the export by its last segment, and generates as from disk", async () => {
    const lm = await load(url(cases.dirs.char_lm));
    assert.equal(lm.manifest.name, "char_lm");
    assert.equal(lm.text.kind, "characters");
    const c = cases.greedy[0];
    assert.deepEqual(await new Generator(lm).generate(c.prompt, { maxNewTokens: c.new }), c.ids);
  });

  test("a manifest URL, or a prefix and a name", async () => {
    const byManifest = await load(url(cases.dirs.lm, "lm.manifest.json"));
    const byName = await load(new URL(url(cases.dirs.lm)), { name: "lm" });
    assert.equal(byManifest.manifest.name, "lm");
    assert.equal(byName.manifest.name, "lm");
  });

  test("an altered file is refused, as from disk", async () => {
    await assert.rejects(load(url(cases.dirs.altered_text)), { message: cases.alteredText });
    assert.ok(await load(url(cases.dirs.altered_text), { verify: false }));
  });

  test("a missing file is named", async () => {
    const c = cases.manifestErrors.find((e) => e.id === "missing onnx");
    await assert.rejects(load(url(c.dir), { name: "lm" }), {
      message: `the manifest's onnx file lm.onnx is missing from ${url(c.dir)}`,
    });
  });

  test("a path the URL parser resolves out of the export is refused", async () => {
    const dir = await mkdtemp(join(tmpdir(), "favor-runtime-"));
    try {
      await cp(cases.dirs.lm, join(dir, "lm"), { recursive: true });
      const path = join(dir, "lm", "lm.manifest.json");
      const manifest = JSON.parse(await readFile(path, "utf8"));
      manifest.files.onnx.path = "%2e%2e/lm.onnx";
      await writeFile(path, JSON.stringify(manifest));
      await cp(join(dir, "lm", "lm.onnx"), join(dir, "lm.onnx"));
      await assert.rejects(load(url(join(dir, "lm"))), {
        message:
          `lm.manifest.json lists onnx file '%2e%2e/lm.onnx', which lies outside the export ` +
          `directory ${url(join(dir, "lm"))}: refusing to read it`,
      });
    } finally {
      await rm(dir, { recursive: true });
    }
  });

  test("without crypto.subtle (an insecure page), verify says how to skip it", async () => {
    const crypto = Object.getOwnPropertyDescriptor(globalThis, "crypto");
    Object.defineProperty(globalThis, "crypto", { value: {}, configurable: true });
    try {
      await assert.rejects(load(url(cases.dirs.lm), { name: "lm" }), {
        name: "ManifestError",
        message: /crypto\.subtle is missing .*\{ verify: false \} to skip the check$/,
      });
      assert.ok(await load(url(cases.dirs.lm), { name: "lm", verify: false }));
    } finally {
      Object.defineProperty(globalThis, "crypto", crypto);
    }
  });

  test("no manifest at the URL", async () => {
    await assert.rejects(load(url(cases.dirs.lm), { name: "nope" }), {
      message: `no manifest at ${url(cases.dirs.lm, "nope.manifest.json")}`,
    });
  });
});
