"""``Session``: an exported model on ONNX Runtime, with its inputs checked against the manifest."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .contract import VOCABULARY_KINDS, Manifest, ManifestError, ModelKind, TensorEntry
from .dtypes import DTYPES, numpy_dtype
from .manifest import export_files, find_manifest, load_manifest
from .text import Text, read_text

log = logging.getLogger("favor.runtime")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# The files a Session can load, by manifest role, as messages name them; the first listed in a
# manifest is loaded by default.
MODEL_FILES = {
    "onnx": "ONNX file (exported with --format torchscript?)",
    "ort": "ORT file (export with --format onnx,ort)",
}
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """Full provider names; ``"auto"`` is CUDA where onnxruntime-gpu sees a device, else CPU.

    Unknown or unavailable providers raise ValueError listing the available ones.
    """
    available = ort.get_available_providers()
    if providers == "auto":
        chosen = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
        return [*chosen, "CPUExecutionProvider"]
    names = [providers] if isinstance(providers, str) else list(providers)
    resolved = [PROVIDER_ALIASES.get(n.lower(), n) for n in names]
    missing = [n for n in resolved if n not in available]
    if missing:
        raise ValueError(
            f"execution provider {', '.join(missing)} is not available in onnxruntime "
            f"{ort.__version__}; available: {', '.join(available)}"
        )
    return resolved


def session_options(threads: int | None = None, optimization: str = "all") -> ort.SessionOptions:
    """The ONNX Runtime options every favor session uses.

    ORT's memory pattern plans one block per input shape and allocates it afresh for each new
    shape. Prefill lengths vary from call to call, and the block for long sequences is large:
    for causal attention at n = 65536 (H = 8, D = 64, M = 128) it doubled peak memory, 3.36 GiB
    against 1.74 GiB without it, at the same speed (811 and 803 ms per call); decode steps
    measured the same either way. So it is off.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    options.log_severity_level = 3
    options.enable_mem_pattern = False
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


class Session:
    """An exported model loaded into ONNX Runtime, its inputs checked against the manifest.

    Args:
        path: an export directory, its ``.onnx`` file, or its manifest.
        providers: ``"auto"`` (CUDA where onnxruntime-gpu sees a device, else CPU), a name
            (``"cpu"``, ``"cuda"``, ``"tensorrt"`` or a full ONNX Runtime provider name), or a
            list of them in order of preference.
        threads: intra-op threads; None leaves ONNX Runtime's choice.
        optimization: ONNX Runtime's graph optimization, ``"disable"``, ``"basic"``,
            ``"extended"`` or ``"all"``.
        name: which export, when the directory holds several.
        verify: check every file's sha256 against the manifest before loading.
        model: which file of the export to load, ``"onnx"`` (the ONNX graph) or ``"ort"``
            (the same graph in ONNX Runtime's format, ``favor-export --format onnx,ort``,
            optimized for the CPU provider); None: the ONNX graph, or the ORT file where the
            manifest lists no ONNX graph (an app shipping only the ``.ort``).

    Raises:
        ManifestError: a missing, altered or inconsistent export, or a graph ONNX Runtime
            cannot load. ValueError: an unknown provider or option.

    Attributes: ``manifest`` (the typed :class:`~favor.runtime.contract.Manifest`),
    ``model`` (``"onnx"`` or ``"ort"``) and ``model_path`` (the file loaded),
    ``inputs``/``outputs`` (its tensor entries), ``state`` (``(input, output)`` name pairs),
    ``kind``, ``providers``, ``options`` (its ``SessionOptions``), ``device`` (``"cpu"`` or
    ``"cuda"``), ``text`` (encode and decode text, where the export carries its vocabulary).
    :meth:`run` may be called from several threads at once.
    """

    def __init__(
        self,
        path: str | Path,
        providers: str | Sequence[str] = "auto",
        threads: int | None = None,
        optimization: str = "all",
        *,
        name: str | None = None,
        verify: bool = True,
        model: str | None = None,
    ) -> None:
        if model not in (None, *MODEL_FILES):
            raise ValueError(f"model must be one of {', '.join(MODEL_FILES)}, got {model!r}")
        self.manifest_path = find_manifest(path, name)
        self.manifest: Manifest = load_manifest(self.manifest_path, verify=verify)
        self.model = model or next((m for m in MODEL_FILES if m in self.manifest.files), "onnx")
        if self.model not in self.manifest.files:
            raise ManifestError(f"{self.manifest_path.name} lists no {MODEL_FILES[self.model]}")
        self.model_path = export_files(self.manifest_path, self.manifest)[self.model]
        if optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(
                f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        # Kept so that other graphs of the export (the --static pair) run as this one does.
        self.options = session_options(threads, optimization)
        self.providers = resolve_providers(providers)
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), self.options, providers=self.providers
            )
        except Exception as error:  # onnxruntime's exception types are not exported
            hint = (
                "; the graph uses ONNX Runtime's fused LinearAttention op (--fused-attention), "
                "which onnxruntime 1.31 has and older or non-contrib builds lack"
                if self.manifest.fused_attention
                else ""
            )
            raise ManifestError(
                f"onnxruntime cannot load {self.model_path.name}: {str(error).splitlines()[0]}{hint}"
            ) from None
        self.device = (
            "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        )
        log.info(
            "favor.runtime: %s on %s",
            self.model_path.name,
            ", ".join(self._session.get_providers()),
        )
        self.inputs: tuple[TensorEntry, ...] = self.manifest.inputs
        self.outputs: tuple[TensorEntry, ...] = self.manifest.outputs
        # (input, output) name pairs: the output of one call is that input of the next.
        self.state = tuple((s.input, s.output) for s in self.manifest.state)
        self.vocabularies: dict[str, tuple[int, int]] = {
            entry.name: entry.range
            for entry in self.inputs
            if entry.range is not None and self.kind in VOCABULARY_KINDS
        }
        self._check_graph_matches_manifest()

    @property
    def onnx_path(self) -> Path:
        """The file loaded (:attr:`model_path`), by the name it had when it was always ONNX."""
        return self.model_path

    @property
    def kind(self) -> ModelKind:
        return self.manifest.kind

    @functools.cached_property
    def text(self) -> Text | None:
        """The export's text handling (:mod:`.text`), read on first use; None if it has none.

        Raises ManifestError when the file cannot be read (for a ``tokenizer.json``: without
        the ``tokenizers`` package).
        """
        if self.manifest.text is None:
            return None
        path = export_files(self.manifest_path, self.manifest)["text"]
        return read_text(self.manifest.text["kind"], path)

    def _check_graph_matches_manifest(self) -> None:
        graph = {i.name: i.type for i in self._session.get_inputs()}
        graph_out = {o.name: o.type for o in self._session.get_outputs()}
        for kind, declared, actual in (
            ("input", self.inputs, graph),
            ("output", self.outputs, graph_out),
        ):
            names = [t.name for t in declared]
            if sorted(names) != sorted(actual):
                raise ManifestError(
                    f"the manifest's {kind}s {names} do not match the graph's {sorted(actual)} in "
                    f"{self.model_path.name}"
                )
            for t in declared:
                if DTYPES[t.dtype].ort != actual[t.name]:
                    raise ManifestError(
                        f"the manifest says {kind} {t.name!r} is {t.dtype}, the graph says {actual[t.name]}"
                    )

    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Zero-filled state inputs for ``batch`` sequences (empty for stateless models)."""
        state = {}
        for entry in self.manifest.state_inputs:
            shape = tuple(batch if isinstance(d, str) else d for d in entry.shape)
            state[entry.name] = np.zeros(shape, dtype=numpy_dtype(entry.dtype))
        return state

    def check_inputs(self, feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Inputs as numpy arrays, checked against the manifest before ONNX Runtime sees them.

        Checked: names, dtypes, ranks, fixed dims, symbolic dims shared across inputs, and token
        ids against the vocabulary. Raises ValueError naming the input, what was expected and what
        was given.
        """
        expected = {t.name: t for t in self.inputs}
        unknown = sorted(set(feeds) - set(expected))
        if unknown:
            raise ValueError(
                f"unknown input {', '.join(unknown)}; this model takes {', '.join(expected)}"
            )
        missing = [n for n in expected if n not in feeds]
        if missing:
            raise ValueError(
                f"missing input {', '.join(missing)}; this model takes {', '.join(expected)}"
            )
        arrays: dict[str, np.ndarray] = {}
        symbols: dict[str, tuple[int, str]] = {}
        for name, info in expected.items():
            value = feeds[name]
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            want = DTYPES[info.dtype].numpy
            if want is not None and array.dtype != want:
                raise ValueError(f"input {name!r} must be {info.dtype}, got {array.dtype}")
            if array.ndim != len(info.shape):
                raise ValueError(
                    f"input {name!r} must have rank {len(info.shape)} {layout(info.shape)}, "
                    f"got shape {array.shape}"
                )
            for axis, (dim, size) in enumerate(zip(info.shape, array.shape, strict=True)):
                if isinstance(dim, int) and dim != size:
                    raise ValueError(
                        f"input {name!r} must have shape {layout(info.shape)}: axis {axis} must be "
                        f"{dim}, got shape {array.shape}"
                    )
                if isinstance(dim, str):
                    if size < 1:
                        raise ValueError(
                            f"input {name!r} axis {axis} ({dim}) must be >= 1, got {size}"
                        )
                    seen = symbols.setdefault(dim, (size, name))
                    if seen[0] != size:
                        raise ValueError(
                            f"input {name!r} has {dim}={size} but input {seen[1]!r} has {dim}={seen[0]}"
                        )
            if name in self.vocabularies:
                check_token_ids(array, f"input {name!r}", self.vocabularies[name])
            arrays[name] = array
        return arrays

    def run(
        self, feeds: Mapping[str, object] | None = None, /, **kwargs: object
    ) -> dict[str, np.ndarray]:
        """Run the model: ``run({"tokens": ids, ...})`` or ``run(tokens=ids, ...)``.

        Args:
            feeds, kwargs: every input by name (together), as numpy arrays or nested lists of
                the manifest's dtypes and shapes, e.g. a causal LM's ``tokens (B, N)`` int64
                and ``state.*`` from :meth:`initial_state` or a previous call's ``new_state.*``.
                Checked first (:meth:`check_inputs`).

        Returns:
            ``{output name: numpy array}``, e.g. ``logits (B, N, V)`` and ``new_state.*``.
        """
        merged = {**(feeds or {}), **kwargs}
        arrays = self.check_inputs(merged)
        return self.run_arrays(arrays)

    def run_arrays(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`run` without the manifest checks, for callers whose feeds are the graph's own
        outputs and inputs they checked already (the Generator's state and tokens)."""
        names = [t.name for t in self.outputs]
        return dict(zip(names, self._session.run(names, dict(feeds)), strict=True))

    def io_binding(self) -> ort.IOBinding:
        return self._session.io_binding()

    def run_with_iobinding(self, binding: ort.IOBinding) -> None:
        self._session.run_with_iobinding(binding)


def check_token_ids(ids: np.ndarray, what: str, vocabulary: tuple[int, int]) -> None:
    """ValueError naming ``what`` and its first id outside ``vocabulary`` ``[low, high)``.

    ONNX Gather reads a negative id from the end of the embedding table and rejects one past
    the end only deep inside ONNX Runtime, so both are caught here.
    """
    low, high = vocabulary
    if ids.size == 0 or (ids.min() >= low and ids.max() < high):
        return
    bad = ids[(ids < low) | (ids >= high)]
    raise ValueError(f"{what} holds token id {int(bad[0])}, outside the vocabulary [{low}, {high})")


def layout(shape: Sequence[int | str]) -> str:
    """``(batch, seq)``: a manifest shape as messages show it."""
    return "(" + ", ".join(str(d) for d in shape) + ")"
