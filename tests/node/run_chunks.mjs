// Runs a favor causal-LM export in onnxruntime-web's wasm backend (as a browser would) and prints
// the logits of each chunk of token ids fed in turn, with the state carried between chunks.
//   node run_chunks.mjs EXPORT_DIR NAME '[[prefill ids...], [id], [id]]'
// Prints {"logits": [[...chunk 0, flattened...], ...]} as JSON on stdout.
import fs from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-web";

const [dir, name, chunksJson] = process.argv.slice(2);
const manifest = JSON.parse(fs.readFileSync(path.join(dir, `${name}.manifest.json`), "utf8"));
ort.env.wasm.numThreads = 1; // threads would need SharedArrayBuffer, which pages rarely have
const session = await ort.InferenceSession.create(
  fs.readFileSync(path.join(dir, manifest.files.onnx.path)),
  { executionProviders: ["wasm"] },
);

const feeds = {};
for (const s of manifest.state) {
  const shape = s.shape.map((d) => (d === "batch" ? 1 : d));
  const size = shape.reduce((a, b) => a * b, 1);
  feeds[s.input] = s.dtype === "int64"
    ? new ort.Tensor("int64", new BigInt64Array(size), shape)
    : new ort.Tensor("float32", new Float32Array(size), shape);
}
const logits = [];
for (const ids of JSON.parse(chunksJson)) {
  feeds.tokens = new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
  const out = await session.run(feeds);
  for (const s of manifest.state) feeds[s.input] = out[s.output];
  logits.push(Array.from(out.logits.data));
}
console.log(JSON.stringify({ logits }));
