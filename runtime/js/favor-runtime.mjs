/**
 * favor-runtime for JavaScript: favor-export's exports on onnxruntime-node or onnxruntime-web.
 *
 * The JavaScript twin of the Python `favor.runtime`: it reads an export's manifest, checks it
 * and the files it lists, loads the ONNX graph into the `ort` module it is given, checks feeds
 * against the manifest, and decodes token by token from a causal LM with its state carried
 * between calls. It imports nothing: Node's builtins are loaded only under Node, so the same
 * file runs unchanged in a browser.
 *
 * Sections: constants; messages; the manifest; export stores (a directory, or a URL prefix);
 * tensors; loading; the model; text; sampling; the Generator.
 *
 * @module favor-runtime
 */

// ---------------------------------------------------------------------------------------------
// Constants

const FORMAT = "favor-export-manifest";
const FORMAT_VERSION = 1;
const MANIFEST_SUFFIX = ".manifest.json";
const KINDS = ["causal-lm", "encoder", "module"];
// Kinds whose integer inputs with a manifest range are token ids, the range their vocabulary.
// (A "module" export's range is only what validation drew values from.)
const VOCABULARY_KINDS = ["causal-lm", "encoder"];
const DTYPES = ["float32", "float16", "bfloat16", "float64", "int64", "int32", "bool"];
const INTEGER_DTYPES = ["int64", "int32"];
const SYMBOL = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SHA256 = /^[0-9a-f]{64}$/;
const URL_SCHEME = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;

/** The most prompt tokens a Generator feeds the graph in one call, unless told otherwise. */
export const DEFAULT_PREFILL_CHUNK = 4096;

// What Python's `session_options` sets. The memory pattern plans one block per input shape, and
// prefill lengths vary from call to call, so it only costs memory: off.
const SESSION_DEFAULTS = {
  graphOptimizationLevel: "all",
  enableMemPattern: false,
  logSeverityLevel: 3,
};

const BUSY =
  "this Generator is already in use (by a call still awaited, or by a stream that is still " +
  "open): it holds one sequence's state; give each concurrent task its own Generator (they " +
  "can share one model)";

// ---------------------------------------------------------------------------------------------
// Messages: worded as the Python runtime words them, so both read alike.

/**
 * A missing, unreadable or inconsistent export: the message names the file and the problem.
 */
export class ManifestError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "ManifestError";
  }
}

/** `text` as Python's repr writes a string: `'tokens'`. */
function quote(text) {
  const mark = text.includes("'") && !text.includes('"') ? '"' : "'";
  const escaped = text
    .replaceAll("\\", "\\\\")
    .replaceAll(mark, `\\${mark}`)
    .replaceAll("\n", "\\n")
    .replaceAll("\r", "\\r")
    .replaceAll("\t", "\\t");
  return `${mark}${escaped}${mark}`;
}

/** A tensor's dims as Python prints a shape tuple: `(1, 3)`, `(2,)`. */
function tuple(dims) {
  return dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(", ")})`;
}

/** A manifest shape as messages show it: `(batch, seq)`. */
function layout(shape) {
  return `(${shape.join(", ")})`;
}

/** A value given as an argument, for a message. */
function show(value) {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

/** A short rendering of a manifest value for a message, as the Python runtime's. */
function describe(value) {
  if (value === undefined) return "nothing";
  if (Array.isArray(value)) {
    const flat = value.every(
      (v) => v === null || ["boolean", "number", "string"].includes(typeof v),
    );
    const text = `[${value.map((v) => JSON.stringify(v)).join(", ")}]`;
    return flat && text.length <= 40 ? text : `a list of ${value.length} items`;
  }
  if (isObject(value)) return "an object";
  const text = typeof value === "string" ? quote(value) : JSON.stringify(value);
  return text.length <= 40 ? text : `${text.slice(0, 37)}...`;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function isInt(value, atLeast = -Infinity) {
  return Number.isInteger(value) && value >= atLeast;
}

function oneOf(values) {
  return `one of ${values.join(", ")}`;
}

// ---------------------------------------------------------------------------------------------
// The manifest: the entries the runtime relies on, checked as the Python runtime checks them.

/** Checks of one manifest's entries, each throwing a ManifestError that names the entry. */
class ManifestChecker {
  /** @param {string} source the manifest's name in messages */
  constructor(source) {
    this.source = source;
  }

  fail(where, want, value) {
    throw new ManifestError(
      `invalid manifest ${this.source}: ${where} must be ${want}, got ${describe(value)}`,
    );
  }

  /** `parent[key]`, or a ManifestError saying it must be `want`. */
  require(parent, key, valid, want, where = "") {
    const value = Object.hasOwn(parent, key) ? parent[key] : undefined;
    if (value === undefined || !valid(value)) {
      this.fail(where ? `${where}.${key}` : key, want, value);
    }
    return value;
  }

  /** The list `manifest[key]`, every item an object. */
  items(manifest, key, nonEmpty = true) {
    const want = nonEmpty ? "a non-empty list" : "a list";
    const items = this.require(
      manifest,
      key,
      (v) => Array.isArray(v) && (v.length > 0 || !nonEmpty),
      want,
    );
    items.forEach((item, index) => {
      if (!isObject(item)) this.fail(`${key}[${index}]`, "an object", item);
    });
    return items;
  }

  /** Check the tensor list `manifest[key]`; return its names. */
  tensors(manifest, key) {
    const names = new Set();
    this.items(manifest, key).forEach((entry, index) => {
      const where = `${key}[${index}]`;
      const name = this.require(entry, "name", isName, "a non-empty string", where);
      if (names.has(name)) {
        throw new ManifestError(
          `invalid manifest ${this.source}: ${where}.name ${quote(name)} is listed twice`,
        );
      }
      names.add(name);
      this.require(entry, "dtype", (v) => DTYPES.includes(v), oneOf(DTYPES), where);
      const shape = this.require(entry, "shape", Array.isArray, "a list", where);
      shape.forEach((dim, axis) => {
        if (!(isSymbol(dim) || isInt(dim, 1))) {
          this.fail(`${where}.shape[${axis}]`, "a positive integer or a symbol name", dim);
        }
      });
      if (Object.hasOwn(entry, "range")) {
        this.require(entry, "range", isRange, "[low, high] integers with low < high", where);
      }
    });
    return names;
  }
}

function isName(value) {
  return typeof value === "string" && value !== "";
}

function isSymbol(value) {
  return typeof value === "string" && SYMBOL.test(value);
}

function isRange(value) {
  return (
    Array.isArray(value) &&
    value.length === 2 &&
    value.every((v) => isInt(v)) &&
    value[0] < value[1]
  );
}

/**
 * ManifestError naming the first entry the runtime relies on that is missing or malformed:
 * format and version, kind, the tensors, the state wiring, files, sequence_dim,
 * max_sequence_length and text.
 */
function checkManifest(manifest, source) {
  if (!isObject(manifest) || manifest.format !== FORMAT) {
    throw new ManifestError(`${source} is not a favor-export manifest`);
  }
  if (manifest.format_version !== FORMAT_VERSION) {
    throw new ManifestError(
      `${source} has manifest format version ${describe(manifest.format_version ?? null)}; ` +
        `this version reads ${FORMAT_VERSION}`,
    );
  }
  const check = new ManifestChecker(source);
  check.require(manifest, "kind", (v) => KINDS.includes(v), oneOf(KINDS));
  const inputs = check.tensors(manifest, "inputs");
  const outputs = check.tensors(manifest, "outputs");
  check.items(manifest, "state", false).forEach((entry, index) => {
    const where = `state[${index}]`;
    check.require(entry, "input", (v) => inputs.has(v), "the name of one of the inputs", where);
    check.require(entry, "output", (v) => outputs.has(v), "the name of one of the outputs", where);
  });
  const files = check.require(manifest, "files", isObject, "an object");
  for (const [role, entry] of Object.entries(files)) {
    const where = `files.${role}`;
    check.require(files, role, isObject, "an object", "files");
    check.require(entry, "path", isName, "a non-empty string", where);
    check.require(
      entry,
      "sha256",
      (v) => typeof v === "string" && SHA256.test(v),
      "a sha256 hex digest",
      where,
    );
    check.require(entry, "bytes", (v) => isInt(v, 0), "an integer >= 0", where);
  }
  for (const [key, valid, want] of [
    ["sequence_dim", isSymbol, "a symbol name or null"],
    ["max_sequence_length", (v) => isInt(v, 1), "a positive integer or null"],
    ["text", isTextEntry, 'null or an object {"kind": a non-empty string}'],
  ]) {
    if (manifest[key] != null) check.require(manifest, key, valid, want);
  }
  if (manifest.text != null && !Object.hasOwn(files, "text")) {
    throw new ManifestError(`invalid manifest ${source}: it has text but no files.text`);
  }
}

function isTextEntry(value) {
  return isObject(value) && Object.keys(value).join() === "kind" && isName(value.kind);
}

/**
 * The entries that play a role, found by the state wiring and the dtypes (never by position):
 * `tokens`, a causal LM's or encoder's one integer input that is not state; `logits`, a causal
 * LM's one output that is not state. Either is null for kinds that lack the role.
 */
function roles(manifest, source) {
  const only = (found, role) => {
    if (found.length !== 1) {
      const names = found.map((entry) => quote(entry.name)).join(", ") || "none";
      throw new ManifestError(
        `invalid manifest ${source}: kind ${manifest.kind} needs exactly one ${role}, got ${names}`,
      );
    }
    return found[0];
  };
  const carriedIn = new Set(manifest.state.map((entry) => entry.input));
  const carriedOut = new Set(manifest.state.map((entry) => entry.output));
  const tokens =
    manifest.kind === "module"
      ? null
      : only(
          manifest.inputs.filter((t) => !carriedIn.has(t.name) && INTEGER_DTYPES.includes(t.dtype)),
          "integer input that is not state (its token ids)",
        );
  const logits =
    manifest.kind !== "causal-lm"
      ? null
      : only(
          manifest.outputs.filter((t) => !carriedOut.has(t.name)),
          "output that is not state (its logits)",
        );
  return { tokens, logits };
}

/**
 * `path` with its `.` and `..` segments resolved, or null where it is absolute, names a scheme
 * or a drive, uses backslashes, or leads out of (or to) its directory.
 */
function relativeInside(path) {
  if (path.startsWith("/") || path.includes("\\") || /^[A-Za-z][A-Za-z0-9+.-]*:/.test(path)) {
    return null;
  }
  const kept = [];
  for (const segment of path.split("/")) {
    if (segment === "..") {
      if (kept.length === 0) return null;
      kept.pop();
    } else if (segment !== "" && segment !== ".") {
      kept.push(segment);
    }
  }
  return kept.length > 0 ? kept.join("/") : null;
}

function outside(store, role, entry) {
  return new ManifestError(
    `${store.manifestName} lists ${role} file ${quote(entry.path)}, which lies outside the ` +
      `export directory ${store.directory}: refusing to read it`,
  );
}

function missing(store, role, entry) {
  const name = entry.path.split("/").at(-1);
  return new ManifestError(
    `the manifest's ${role} file ${name} is missing from ${store.directory}`,
  );
}

function checkDigest(store, entry, digest) {
  if (digest !== entry.sha256) {
    throw new ManifestError(
      `${entry.path.split("/").at(-1)} does not match the sha256 in ${store.manifestName}: ` +
        "the file changed after export",
    );
  }
}

function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------------------------
// Export stores: where an export's files come from. Both kinds offer the same members:
//   manifestName, directory (as messages name them), manifestText(),
//   locate(role, entry) (refuses paths outside the export), bytes(role, entry, verify),
//   modelSource(files, verify) ({model, externalData}: what InferenceSession.create takes).

function isNode() {
  return typeof process !== "undefined" && Boolean(process.versions?.node);
}

/** An export directory on disk (Node): `source` is the directory, its manifest, or its .onnx. */
async function directoryStore(source, name) {
  const fs = await import("node:fs/promises");
  const { createReadStream } = await import("node:fs");
  const path = await import("node:path");
  const crypto = await import("node:crypto");
  const manifestPath = await findManifest(fs, path, String(source), name);
  const directory = path.dirname(manifestPath);
  const root = await fs.realpath(directory);

  const unreadable = (file, error) => new ManifestError(`cannot read ${file}: ${error.message}`);

  // The file itself, after following links: inside the export, or refused.
  const real = async (role, entry) => {
    const file = path.join(directory, relativeInside(entry.path));
    let target;
    try {
      target = await fs.realpath(file);
    } catch (error) {
      throw error.code === "ENOENT" ? missing(store, role, entry) : unreadable(file, error);
    }
    const relative = path.relative(root, target);
    if (relative === "" || relative.startsWith("..") || path.isAbsolute(relative)) {
      throw outside(store, role, entry);
    }
    return file;
  };

  const fileDigest = async (file) => {
    const hash = crypto.createHash("sha256");
    try {
      for await (const block of createReadStream(file)) hash.update(block);
    } catch (error) {
      throw unreadable(file, error);
    }
    return hash.digest("hex");
  };

  const store = {
    manifestName: path.basename(manifestPath),
    directory,
    manifestText: () => fs.readFile(manifestPath, "utf8"),
    locate(role, entry) {
      if (relativeInside(entry.path) === null) throw outside(store, role, entry);
    },
    async bytes(role, entry, verify) {
      const file = await real(role, entry);
      const data = new Uint8Array(
        await fs.readFile(file).catch((error) => Promise.reject(unreadable(file, error))),
      );
      if (verify) checkDigest(store, entry, crypto.createHash("sha256").update(data).digest("hex"));
      return data;
    },
    // ONNX Runtime reads the graph itself, and its external data from beside it.
    async modelSource(files, verify) {
      const located = {};
      for (const role of ["onnx", "onnx_data"].filter((r) => files[r])) {
        located[role] = await real(role, files[role]);
        if (verify) checkDigest(store, files[role], await fileDigest(located[role]));
      }
      return { model: located.onnx };
    },
  };
  return store;
}

/** The manifest for `source`, as the Python runtime's `find_manifest` finds it. */
async function findManifest(fs, path, source, name) {
  const given = path.normalize(source).replace(/(.)[\\/]+$/, "$1");
  const stat = await fs.stat(given).catch(() => null);
  if (stat?.isFile() && given.endsWith(MANIFEST_SUFFIX)) return given;
  if (path.extname(given) === ".onnx") {
    if (!stat?.isFile()) throw new ManifestError(`model not found: ${given}`);
    const beside = `${given.slice(0, -".onnx".length)}${MANIFEST_SUFFIX}`;
    if (!(await fs.stat(beside).catch(() => null))?.isFile()) {
      throw new ManifestError(
        `no manifest beside ${path.basename(given)}: expected ${path.basename(beside)}`,
      );
    }
    return beside;
  }
  if (!stat?.isDirectory()) {
    throw new ManifestError(
      `export not found: ${given} (give an export directory, .onnx or manifest)`,
    );
  }
  if (name !== undefined) {
    const chosen = path.join(given, `${name}${MANIFEST_SUFFIX}`);
    if (!(await fs.stat(chosen).catch(() => null))?.isFile()) {
      throw new ManifestError(`no manifest ${name}${MANIFEST_SUFFIX} in ${given}`);
    }
    return chosen;
  }
  const found = (await fs.readdir(given)).filter((f) => f.endsWith(MANIFEST_SUFFIX)).sort();
  if (found.length === 0) {
    throw new ManifestError(
      `no *${MANIFEST_SUFFIX} in ${given}: is it a favor-export output directory?`,
    );
  }
  if (found.length > 1) {
    const names = found.map((f) => f.slice(0, -MANIFEST_SUFFIX.length)).join(", ");
    throw new ManifestError(`${given} holds several exports (${names}); choose one by name`);
  }
  return path.join(given, found[0]);
}

/**
 * An export served over HTTP(S): `source` is a URL prefix (the manifest is
 * `${prefix}${name}.manifest.json`, `name` defaulting to the prefix's last path segment) or
 * the manifest's URL. Files are fetched relative to the manifest.
 */
function urlStore(source, name) {
  const text = String(source);
  let manifestUrl;
  try {
    const base = globalThis.location?.href;
    if (text.endsWith(MANIFEST_SUFFIX)) {
      manifestUrl = new URL(text, base);
    } else {
      const prefix = new URL(text.endsWith("/") ? text : `${text}/`, base);
      const chosen =
        name ?? decodeURIComponent(prefix.pathname.split("/").filter(Boolean).at(-1) ?? "");
      if (chosen === "") {
        throw new ManifestError(
          `${text} has no last path segment to name the export: pass { name }`,
        );
      }
      manifestUrl = new URL(`${encodeURIComponent(chosen)}${MANIFEST_SUFFIX}`, prefix);
    }
  } catch (error) {
    if (error instanceof ManifestError) throw error;
    throw new ManifestError(`export not found: ${text} is not a URL (${error.message})`);
  }
  const directory = new URL(".", manifestUrl).href;

  const fetched = async (url, onMissing) => {
    let response;
    try {
      response = await fetch(url);
    } catch (error) {
      throw new ManifestError(`cannot fetch ${url}: ${error.message}`);
    }
    if (response.status === 404) throw onMissing();
    if (!response.ok) {
      throw new ManifestError(
        `cannot fetch ${url}: HTTP ${response.status} ${response.statusText}`,
      );
    }
    return new Uint8Array(await response.arrayBuffer());
  };

  const located = (role, entry) => {
    const relative = relativeInside(entry.path);
    // The URL parser reads "%2e%2e" as "..": compare where the URL really points.
    const url = relative === null ? null : new URL(relative, directory).href;
    if (url === null || !url.startsWith(directory) || url === directory) {
      throw outside(store, role, entry);
    }
    return url;
  };

  const store = {
    manifestName: decodeURIComponent(manifestUrl.pathname.split("/").at(-1)),
    directory,
    async manifestText() {
      const bytes = await fetched(
        manifestUrl.href,
        () => new ManifestError(`no manifest at ${manifestUrl.href}`),
      );
      return new TextDecoder().decode(bytes);
    },
    locate: located,
    async bytes(role, entry, verify) {
      const data = await fetched(located(role, entry), () => missing(store, role, entry));
      if (verify) checkDigest(store, entry, await subtleDigest(data, entry));
      return data;
    },
    async modelSource(files, verify) {
      const model = await store.bytes("onnx", files.onnx, verify);
      if (!files.onnx_data) return { model };
      const data = await store.bytes("onnx_data", files.onnx_data, verify);
      return { model, externalData: [{ path: files.onnx_data.path, data }] };
    },
  };
  return store;
}

async function subtleDigest(data, entry) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new ManifestError(
      `cannot check the sha256 of ${entry.path}: crypto.subtle is missing (a page served over ` +
        "plain http from a host other than localhost is not a secure context); serve it over " +
        "https, or pass { verify: false } to skip the check",
    );
  }
  return hex(await subtle.digest("SHA-256", data));
}

// ---------------------------------------------------------------------------------------------
// Tensors

// Zero-filled data of each dtype; float16 as raw bits (all zero bits are +0), which ort accepts
// whether or not the platform has Float16Array.
const ZEROS = {
  float32: (n) => new Float32Array(n),
  float16: (n) => new Uint16Array(n),
  float64: (n) => new Float64Array(n),
  int64: (n) => new BigInt64Array(n),
  int32: (n) => new Int32Array(n),
  bool: (n) => new Uint8Array(n),
};

function isTensor(value) {
  return (
    value !== null &&
    typeof value === "object" &&
    typeof value.type === "string" &&
    Array.isArray(value.dims)
  );
}

function kindOf(value) {
  if (value === null || value === undefined) return String(value);
  if (Array.isArray(value)) return "an Array";
  if (typeof value !== "object") return `a ${typeof value}`;
  const type = value.constructor?.name;
  return type && type !== "Object" ? `a ${type}` : "an object";
}

/** The number float16 bits `bits` (0..65535) stand for, subnormals, infinities and NaN included. */
function halfValue(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1024 + fraction) * 2 ** (exponent - 25);
}

/**
 * Float16 values as float32: `bits` holds raw IEEE 754 half-precision bits, as onnxruntime
 * hands float16 tensors out where the platform lacks Float16Array.
 *
 * @param {Uint16Array} bits raw float16 bits, shape (N,)
 * @returns {Float32Array} the same values, shape (N,)
 */
export function float16ToFloat32(bits) {
  return Float32Array.from(bits, halfValue);
}

/** The float values `data[start, end)` of a tensor of type `type`, as float32. */
function floatsOf(type, data, start, end) {
  const part = data.subarray(start, end);
  return type === "float16" && part instanceof Uint16Array
    ? float16ToFloat32(part)
    : Float32Array.from(part);
}

/** Error naming `what` and its first id outside `[low, high)`; ids are numbers or BigInts. */
function checkTokenIds(ids, what, [low, high]) {
  for (const id of ids) {
    // Relational operators compare a BigInt with a number exactly.
    if (id < low || id >= high) {
      throw new Error(`${what} holds token id ${id}, outside the vocabulary [${low}, ${high})`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Loading

/**
 * Load an export: read and check its manifest, verify the files it reads, and open the graph.
 *
 * @param {object} ort the onnxruntime module: `import * as ort from "onnxruntime-node"` (or web)
 * @param {string | URL} source under Node, an export directory, its `.manifest.json` or its
 *   `.onnx`; a URL (`http(s)://…`, or any source in a browser): a URL prefix such as
 *   `/build/char_lm/`, or the manifest's URL
 * @param {object} [options]
 * @param {string} [options.name] which export, where a directory holds several; for a URL
 *   prefix, the default is its last path segment
 * @param {boolean} [options.verify=true] check each file's sha256 against the manifest
 * @param {object} [options.sessionOptions] onnxruntime session options, over favor's defaults
 *   (graphOptimizationLevel "all", enableMemPattern false)
 * @param {Array} [options.executionProviders] onnxruntime execution providers
 * @returns {Promise<Model>}
 * @throws {ManifestError} a missing, altered or inconsistent export, or a graph onnxruntime
 *   cannot load
 */
export async function loadExport(ort, source, options = {}) {
  if (typeof ort?.InferenceSession?.create !== "function" || typeof ort.Tensor !== "function") {
    throw new TypeError(
      'loadExport needs the onnxruntime module first: import * as ort from "onnxruntime-node" (or "onnxruntime-web")',
    );
  }
  const { name, verify = true, sessionOptions = {}, executionProviders } = options;
  if (name !== undefined && !isName(name)) {
    throw new Error(`name must be a non-empty string, got ${show(name)}`);
  }
  const byUrl = source instanceof URL || URL_SCHEME.test(String(source)) || !isNode();
  const store = byUrl ? urlStore(source, name) : await directoryStore(source, name);
  const manifest = await readManifest(store);
  const found = roles(manifest, store.manifestName);
  const files = manifest.files;
  for (const [role, entry] of Object.entries(files)) store.locate(role, entry);
  if (!files.onnx) {
    throw new ManifestError(
      `${store.manifestName} lists no ONNX file (exported with --format torchscript?)`,
    );
  }
  const text = await loadText(store, manifest, verify);
  const { model, externalData } = await store.modelSource(files, verify);
  const settings = { ...SESSION_DEFAULTS, ...sessionOptions };
  if (externalData) settings.externalData = externalData;
  if (executionProviders) settings.executionProviders = executionProviders;
  const onnxName = files.onnx.path.split("/").at(-1);
  let session;
  try {
    session = await ort.InferenceSession.create(model, settings);
  } catch (error) {
    const hint = manifest.fused_attention
      ? "; the graph uses ONNX Runtime's fused LinearAttention op (--fused-attention), which " +
        "onnxruntime 1.31 has and older or non-contrib builds lack"
      : "";
    throw new ManifestError(
      `onnxruntime cannot load ${onnxName}: ${String(error?.message ?? error).split("\n")[0]}${hint}`,
    );
  }
  checkGraph(session, manifest, onnxName);
  return new Model(ort, manifest, session, text, found);
}

async function readManifest(store) {
  let manifest;
  try {
    manifest = JSON.parse(await store.manifestText());
  } catch (error) {
    if (error instanceof ManifestError) throw error;
    throw new ManifestError(`cannot read manifest ${store.manifestName}: ${error.message}`);
  }
  checkManifest(manifest, store.manifestName);
  return manifest;
}

/** ManifestError where the graph's input or output names or dtypes differ from the manifest's. */
function checkGraph(session, manifest, onnxName) {
  const lists = [
    ["input", manifest.inputs, session.inputNames, session.inputMetadata],
    ["output", manifest.outputs, session.outputNames, session.outputMetadata],
  ];
  for (const [kind, declared, actual, metadata] of lists) {
    const names = declared.map((entry) => entry.name);
    if ([...names].sort().join("\n") !== [...actual].sort().join("\n")) {
      const list = (items) => `[${items.map(quote).join(", ")}]`;
      throw new ManifestError(
        `the manifest's ${kind}s ${list(names)} do not match the graph's ${list([...actual].sort())} in ${onnxName}`,
      );
    }
    // Builds whose sessions carry no metadata are checked by name only.
    for (const meta of metadata ?? []) {
      const entry = declared.find((e) => e.name === meta.name);
      if (meta.isTensor && meta.type !== entry.dtype) {
        throw new ManifestError(
          `the manifest says ${kind} ${quote(entry.name)} is ${entry.dtype}, the graph says ${meta.type}`,
        );
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The model

/**
 * An export loaded into onnxruntime, its feeds checked against the manifest. Made by
 * {@link loadExport}.
 */
export class Model {
  /** @private */
  constructor(ort, manifest, session, text, { tokens, logits }) {
    /** The onnxruntime module the model runs on. */
    this.ort = ort;
    /** The manifest, as parsed JSON. */
    this.manifest = manifest;
    /** The onnxruntime InferenceSession. */
    this.session = session;
    /** `{kind, encode, decode}` for a character vocabulary; null otherwise. */
    this.text = text;
    /** "causal-lm", "encoder" or "module". */
    this.kind = manifest.kind;
    /** The manifest's input entries: `{name, dtype, shape, range?}`. */
    this.inputs = manifest.inputs;
    /** The manifest's output entries: `{name, dtype, shape}`. */
    this.outputs = manifest.outputs;
    /** `[{input, output}]`: output `output` of one call is input `input` of the next. */
    this.state = manifest.state.map(({ input, output }) => ({ input, output }));
    /** The token-id input entry (causal LM, encoder), else null. */
    this.tokensInput = tokens;
    /** The logits output entry (causal LM), else null. */
    this.logitsOutput = logits;
    /** Vocabulary `[low, high)` of each token-id input, by name. */
    this.vocabularies = new Map(
      VOCABULARY_KINDS.includes(this.kind)
        ? manifest.inputs.filter((e) => e.range).map((e) => [e.name, e.range])
        : [],
    );
  }

  /**
   * Zero-filled state inputs for `batch` sequences, symbolic dims set to `batch` (an empty
   * object for stateless models); int64 as BigInt64Array, float16 as raw bits.
   *
   * @param {number} [batch=1]
   * @returns {Object<string, object>} `{stateInputName: ort.Tensor}`
   */
  initialState(batch = 1) {
    if (!isInt(batch, 1)) throw new Error(`batch must be a positive integer, got ${show(batch)}`);
    const state = {};
    for (const { input } of this.state) {
      const entry = this.inputs.find((e) => e.name === input);
      const zeros = ZEROS[entry.dtype];
      if (!zeros) {
        throw new Error(
          `onnxruntime's JavaScript API has no ${entry.dtype} tensors to hold ${input}`,
        );
      }
      const dims = entry.shape.map((d) => (typeof d === "string" ? batch : d));
      state[input] = new this.ort.Tensor(entry.dtype, zeros(dims.reduce((a, b) => a * b, 1)), dims);
    }
    return state;
  }

  /**
   * Throw an Error naming the first feed that does not fit the manifest: names, dtypes, ranks,
   * fixed dims, symbolic dims shared across inputs (each >= 1), and token ids against the
   * vocabulary. The messages are the Python runtime's.
   *
   * @param {Object<string, object>} feeds `{inputName: ort.Tensor}`
   */
  checkInputs(feeds) {
    if (!isObject(feeds)) {
      throw new Error(`feeds must be an object of ort.Tensor by input name, got ${kindOf(feeds)}`);
    }
    const expected = this.inputs.map((entry) => entry.name);
    const takes = `this model takes ${expected.join(", ")}`;
    const unknown = Object.keys(feeds)
      .filter((name) => !expected.includes(name))
      .sort();
    if (unknown.length) throw new Error(`unknown input ${unknown.join(", ")}; ${takes}`);
    const absent = expected.filter((name) => !Object.hasOwn(feeds, name));
    if (absent.length) throw new Error(`missing input ${absent.join(", ")}; ${takes}`);
    const symbols = new Map();
    for (const { name, dtype, shape } of this.inputs) {
      const value = feeds[name];
      const what = `input ${quote(name)}`;
      if (!isTensor(value)) throw new Error(`${what} must be an ort.Tensor, got ${kindOf(value)}`);
      // bfloat16 has no JavaScript type to compare with, as it has no numpy one in Python.
      if (dtype !== "bfloat16" && value.type !== dtype) {
        throw new Error(`${what} must be ${dtype}, got ${value.type}`);
      }
      const dims = value.dims;
      if (dims.length !== shape.length) {
        throw new Error(
          `${what} must have rank ${shape.length} ${layout(shape)}, got shape ${tuple(dims)}`,
        );
      }
      shape.forEach((dim, axis) => {
        const size = dims[axis];
        if (typeof dim === "number" && dim !== size) {
          throw new Error(
            `${what} must have shape ${layout(shape)}: axis ${axis} must be ${dim}, got shape ${tuple(dims)}`,
          );
        }
        if (typeof dim === "string") {
          if (size < 1) throw new Error(`${what} axis ${axis} (${dim}) must be >= 1, got ${size}`);
          if (!symbols.has(dim)) symbols.set(dim, [size, name]);
          const [seen, by] = symbols.get(dim);
          if (seen !== size) {
            throw new Error(`${what} has ${dim}=${size} but input ${quote(by)} has ${dim}=${seen}`);
          }
        }
      });
      const vocabulary = this.vocabularies.get(name);
      if (vocabulary) checkTokenIds(value.data, what, vocabulary);
    }
  }

  /**
   * Run the model on `feeds`, checked first ({@link Model#checkInputs}).
   *
   * @param {Object<string, object>} feeds every input by name as an ort.Tensor, e.g. a causal
   *   LM's `tokens (B, N)` int64 and `state.*` from {@link Model#initialState} or a previous
   *   call's `new_state.*`
   * @returns {Promise<Object<string, object>>} `{outputName: ort.Tensor}`, e.g. `logits (B, N, V)`
   */
  async run(feeds) {
    this.checkInputs(feeds);
    return this.session.run(feeds);
  }
}

// ---------------------------------------------------------------------------------------------
// Text

/**
 * The manifest's text entry made usable: a character vocabulary, or null for other kinds
 * (a tokenizer.json is not decoded here) and exports without text.
 */
async function loadText(store, manifest, verify) {
  if (manifest.text?.kind !== "characters") return null;
  const entry = manifest.files.text;
  const file = entry.path.split("/").at(-1);
  const bytes = await store.bytes("text", entry, verify);
  let characters;
  try {
    characters = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (error) {
    throw new ManifestError(`${file}: ${error.message}`);
  }
  const single = (c) => typeof c === "string" && [...c].length === 1;
  if (!Array.isArray(characters) || characters.length === 0 || !characters.every(single)) {
    throw new ManifestError(
      `${file}: a character vocabulary must be a non-empty list of single characters`,
    );
  }
  const index = new Map();
  const repeated = new Set();
  for (const [id, c] of characters.entries()) {
    if (index.has(c)) repeated.add(c);
    else index.set(c, id);
  }
  if (repeated.size) {
    throw new ManifestError(
      `${file}: a character vocabulary lists ${quote(byCodePoint(repeated).join(""))} more than once`,
    );
  }
  return characterText(characters, index);
}

/** Distinct characters sorted as Python sorts strings: by code point. */
function byCodePoint(characters) {
  return [...characters].sort((a, b) => a.codePointAt(0) - b.codePointAt(0));
}

/** Encoding and decoding through a list of characters, token id = index. */
function characterText(characters, index) {
  return {
    kind: "characters",
    /**
     * @param {string} text
     * @returns {number[]} its token ids, one per character
     * @throws {Error} naming the characters outside the vocabulary
     */
    encode(text) {
      const split = [...String(text)];
      const unknown = byCodePoint(new Set(split.filter((c) => !index.has(c))));
      if (unknown.length) {
        throw new Error(
          `the text has characters outside the vocabulary: ${quote(unknown.join(""))}`,
        );
      }
      return split.map((c) => index.get(c));
    },
    /**
     * @param {Iterable<number | bigint>} ids token ids
     * @returns {string}
     * @throws {Error} naming an id outside the vocabulary
     */
    decode(ids) {
      return Array.from(ids, (id) => {
        const at = Number(id);
        if (!isInt(at, 0) || at >= characters.length) {
          throw new Error(
            `token id ${id} is outside the text's vocabulary [0, ${characters.length})`,
          );
        }
        return characters[at];
      }).join("");
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Sampling

const MASK64 = (1n << 64n) - 1n;

/**
 * SplitMix64 (Steele, Lea and Flood 2014; Vigna's splitmix64.c): a 64-bit state advanced by
 * the golden-ratio increment, each output a mix of it. Seed 1234567 gives the reference
 * values 6457827717110365317, 3203168211198807973, ... Not numpy's generator: the same seed
 * draws other tokens than the Python runtime.
 */
export class Rng {
  /**
   * @param {number | bigint} [seed] an integer in [0, 2^64); undefined draws one from
   *   crypto.getRandomValues
   */
  constructor(seed) {
    if (seed === undefined || seed === null) {
      this.state = globalThis.crypto.getRandomValues(new BigUint64Array(1))[0];
    } else if (
      (typeof seed === "bigint" || Number.isSafeInteger(seed)) &&
      seed >= 0 &&
      BigInt(seed) <= MASK64
    ) {
      this.state = BigInt(seed);
    } else {
      throw new Error(`seed must be an integer >= 0 (below 2**64) or undefined, got ${show(seed)}`);
    }
  }

  /** @returns {bigint} the next 64-bit output */
  nextUint64() {
    this.state = (this.state + 0x9e3779b97f4a7c15n) & MASK64;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
    return z ^ (z >> 31n);
  }

  /** @returns {number} uniform in [0, 1), from the top 53 bits of the next output */
  uniform() {
    return Number(this.nextUint64() >> 11n) / 2 ** 53;
  }
}

/**
 * Throw an Error naming the first sampling option out of range, as the Python runtime's
 * `check_sampling` (with JavaScript's names).
 *
 * @param {{temperature?: number, topK?: number, topP?: number}} options
 */
export function checkSampling({ temperature = 0, topK, topP } = {}) {
  if (!(typeof temperature === "number" && temperature >= 0)) {
    throw new Error(`temperature must be >= 0, got ${show(temperature)}`);
  }
  if (topK != null && !isInt(topK, 1)) {
    throw new Error(`topK must be a positive integer or undefined, got ${show(topK)}`);
  }
  if (topP != null && !(typeof topP === "number" && topP > 0 && topP <= 1)) {
    throw new Error(`topP must be in (0, 1] or undefined, got ${show(topP)}`);
  }
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) {
    if (values[i] > values[best]) best = i;
  }
  return best;
}

/**
 * One token id from `logits`: temperature 0 is greedy (the first of equal maxima); otherwise
 * the logits are divided by the temperature, cut to the `topK` best (ties kept) and to the
 * smallest set whose probability reaches `topP` (at least the best token), and sampled. A
 * temperature so small the scaled logits overflow is greedy too, its limit.
 *
 * @param {ArrayLike<number>} logits shape (V,)
 * @param {{temperature?: number, topK?: number, topP?: number}} [options]
 * @param {Rng} [rng] the generator to draw from; a fresh unseeded one where absent
 * @returns {number} the token id, in [0, V)
 * @throws {Error} logits holding NaN
 */
export function sampleToken(logits, { temperature = 0, topK, topP } = {}, rng = undefined) {
  if (Array.prototype.some.call(logits, Number.isNaN)) {
    throw new Error("logits hold NaN: the model's output is not a distribution");
  }
  if (temperature === 0) return argmax(logits);
  let scores = Float64Array.from(logits, (x) => x / temperature);
  if (!Number.isFinite(scores[argmax(scores)])) return argmax(logits);
  if (topK != null && topK < scores.length) {
    const cutoff = Float64Array.from(scores).sort().at(-topK);
    scores = scores.map((s) => (s < cutoff ? -Infinity : s));
  }
  const top = scores[argmax(scores)];
  let probs = scores.map((s) => Math.exp(s - top));
  if (topP != null && topP < 1) {
    const total = probs.reduce((a, b) => a + b, 0);
    const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]);
    const kept = new Float64Array(probs.length);
    let mass = 0;
    for (const id of order) {
      kept[id] = probs[id];
      mass += probs[id] / total;
      if (mass >= topP) break;
    }
    probs = kept;
  }
  return draw(probs, rng ?? new Rng());
}

/** An index drawn with probability proportional to `weights` (not all zero). */
function draw(weights, rng) {
  const total = weights.reduce((a, b) => a + b, 0);
  const target = rng.uniform() * total;
  let cumulative = 0;
  let last = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i] === 0) continue;
    cumulative += weights[i];
    last = i;
    if (cumulative > target) return i;
  }
  return last; // rounding left the target at the very top
}

// ---------------------------------------------------------------------------------------------
// The Generator

/**
 * Token-by-token generation from one causal LM export, one sequence at a time: the prompt goes
 * through the graph in chunks of at most `prefillChunk` tokens, then each new token is one
 * call with seq = 1, the `new_state.*` outputs fed back as the `state.*` inputs by the
 * manifest's wiring.
 *
 * A Generator holds one sequence's state, so it serves one call at a time: a call made while
 * another is awaited, or while a stream is still open, throws instead of mixing two sequences
 * into one state. Several Generators may share one model.
 */
export class Generator {
  /**
   * @param {Model} model from {@link loadExport}, of kind causal-lm
   * @param {{prefillChunk?: number}} [options]
   */
  constructor(model, { prefillChunk = DEFAULT_PREFILL_CHUNK } = {}) {
    if (!(model instanceof Model)) {
      throw new Error(`Generator needs a model from loadExport, got ${kindOf(model)}`);
    }
    if (model.kind !== "causal-lm") {
      throw new Error(`Generator needs a causal LM export, got a ${quote(model.kind)} model`);
    }
    if (!isInt(prefillChunk, 1)) {
      throw new Error(`prefillChunk must be a positive integer, got ${show(prefillChunk)}`);
    }
    this.model = model;
    this.prefillChunk = prefillChunk;
    const size = model.logitsOutput.shape.at(-1);
    /** The token ids `[low, high)` the model takes. */
    this.vocabulary = model.vocabularies.get(model.tokensInput.name) ?? [0, size];
    this.vocabSize = this.vocabulary[1];
    this._busy = false;
    this._reset();
  }

  _acquire() {
    if (this._busy) throw new Error(BUSY);
    this._busy = true;
  }

  /** Runs `work` holding the Generator; refuses at once if another call holds it. */
  async _exclusive(work) {
    this._acquire();
    try {
      return await work();
    } finally {
      this._busy = false;
    }
  }

  /** Forget the sequence (and any failure): the next call starts from an empty state. */
  reset() {
    this._acquire();
    this._reset();
    this._busy = false;
  }

  _reset() {
    this._state = null;
    this._failure = null;
    /** How many tokens the state has taken in. */
    this.position = 0;
  }

  /** `tokens` as numbers, after checking they are token ids. */
  _checkTokens(tokens, what) {
    const sequence = Array.isArray(tokens) || ArrayBuffer.isView(tokens) ? Array.from(tokens) : [];
    if (
      sequence.length === 0 ||
      !sequence.every((t) => Number.isInteger(t) || typeof t === "bigint")
    ) {
      throw new Error(`${what} must be a non-empty 1-D sequence of integer token ids`);
    }
    checkTokenIds(sequence, what, this.vocabulary);
    return sequence.map(Number);
  }

  /** Run `ids` from the current state; return the last position's logits, shape (V,). */
  async _call(ids) {
    if (this._failure !== null) {
      throw new Error(
        `this Generator failed earlier (${this._failure.message}); call reset() before using it again`,
      );
    }
    const limit = this.model.manifest.max_sequence_length;
    if (limit != null && this.position + ids.length > limit) {
      throw new Error(
        `the sequence would reach ${this.position + ids.length} tokens, and this model takes at ` +
          `most ${limit} (max_sequence_length); stream with window=${limit} to keep generating`,
      );
    }
    const { ort, session, tokensInput, logitsOutput, state } = this.model;
    let logits;
    try {
      const data =
        tokensInput.dtype === "int64" ? BigInt64Array.from(ids, BigInt) : Int32Array.from(ids);
      const feeds = { ...(this._state ?? this.model.initialState(1)) };
      feeds[tokensInput.name] = new ort.Tensor(tokensInput.dtype, data, [1, ids.length]);
      const outputs = await session.run(feeds);
      const out = outputs[logitsOutput.name];
      const size = out.dims.at(-1);
      logits = floatsOf(out.type, out.data, (ids.length - 1) * size, ids.length * size);
      this._state = Object.fromEntries(state.map(({ input, output }) => [input, outputs[output]]));
    } catch (error) {
      // The state may be half-updated: refuse to continue rather than produce garbage.
      this._failure = error;
      throw new Error(`decode step failed: ${error.message}`, { cause: error });
    }
    this.position += ids.length;
    return logits;
  }

  async _prefill(ids) {
    let logits;
    for (let start = 0; start < ids.length; start += this.prefillChunk) {
      logits = await this._call(ids.slice(start, start + this.prefillChunk));
    }
    return logits;
  }

  /**
   * Feed `tokens` after whatever came before.
   *
   * @param {ArrayLike<number | bigint>} tokens token ids, shape (L,), L >= 1
   * @returns {Promise<Float32Array>} the last position's logits, shape (V,)
   */
  prefill(tokens) {
    return this._exclusive(() => this._prefill(this._checkTokens(tokens, "tokens")));
  }

  /**
   * Feed one token.
   *
   * @param {number | bigint} token
   * @returns {Promise<Float32Array>} the logits for the next one, shape (V,)
   */
  step(token) {
    return this._exclusive(() => this._call(this._checkTokens([token], "token")));
  }

  /**
   * New token ids as they are chosen, from a fresh sequence started with `promptIds`. The
   * Generator is busy from the first `next()` until the stream ends or is closed. Bad options
   * throw at once.
   *
   * @param {ArrayLike<number | bigint>} promptIds the prompt, shape (L,), L >= 1
   * @param {object} options
   * @param {number} options.maxNewTokens the most tokens to yield (>= 0)
   * @param {number} [options.temperature=0] 0 is greedy
   * @param {number} [options.topK] sample among the `topK` most likely tokens only
   * @param {number} [options.topP] sample among the smallest set of tokens whose probability
   *   reaches `topP`
   * @param {number | bigint} [options.seed] seeds the sampler ({@link Rng}); undefined draws one
   * @param {number | Iterable<number>} [options.stop] token id(s) that end generation, not yielded
   * @param {number} [options.window] for models trained on fixed-length windows: once the state
   *   has taken in `window` tokens, it is rebuilt from the last `window / 2` (rounded down)
   * @returns {AsyncGenerator<number>}
   */
  stream(promptIds, { maxNewTokens, temperature = 0, topK, topP, seed, stop, window } = {}) {
    const sampling = { temperature, topK, topP };
    checkSampling(sampling);
    if (!isInt(maxNewTokens, 0)) {
      throw new Error(`maxNewTokens must be an integer >= 0, got ${show(maxNewTokens)}`);
    }
    if (window != null && !isInt(window, 2)) {
      throw new Error(`window must be an integer >= 2 or undefined, got ${show(window)}`);
    }
    const stops = new Set(typeof stop === "number" ? [stop] : (stop ?? []));
    const prompt = this._checkTokens(promptIds, "promptIds");
    return this._stream(prompt, maxNewTokens, sampling, new Rng(seed), stops, window ?? null);
  }

  async *_stream(prompt, maxNewTokens, sampling, rng, stops, window) {
    this._acquire();
    try {
      this._reset();
      const history = [...prompt];
      let logits = await this._prefill(window === null ? prompt : prompt.slice(-window));
      for (let produced = 0; produced < maxNewTokens; produced++) {
        const token = sampleToken(logits, sampling, rng);
        if (stops.has(token)) return;
        yield token;
        history.push(token);
        if (produced + 1 === maxNewTokens) return;
        if (window !== null && this.position >= window) {
          this._reset();
          logits = await this._prefill(
            this._checkTokens(history.slice(-Math.floor(window / 2)), "history"),
          );
        } else {
          logits = await this._call(this._checkTokens([token], "token"));
        }
      }
    } finally {
      this._busy = false;
    }
  }

  /**
   * The new token ids, as an array: {@link Generator#stream} collected. Same arguments.
   *
   * @returns {Promise<number[]>}
   */
  async generate(promptIds, options) {
    const ids = [];
    for await (const id of this.stream(promptIds, options)) ids.push(id);
    return ids;
  }
}
