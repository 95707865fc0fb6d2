"""``--quantize int8``: dynamic int8 quantization of an exported graph's weight MatMuls.

What is quantized: every MatMul (and Gemm) whose B operand is a constant equal to the weight of
an ``nn.Linear`` of the model (or of an ``nn.Embedding`` reused as an output projection). The
weights become int8 constants; each call quantizes the activation entering them to uint8 from
that call's own range (``DynamicQuantizeLinear``), so no calibration data is needed, and the
integer product is rescaled to float right after (``MatMulInteger``, ``Cast``, ``Mul``).

What stays float: the attention core. The random-feature projection of every FavorAttention is
a constant MatMul operand too, and ``MatMulConstBOnly`` alone would quantize it; but an error
``e`` in ``w . x`` becomes a factor ``exp(e)`` on a feature, largest exactly where ``|x|`` is
(the sample char-LM's ``|q|^2 / sqrt(d)`` is about 67), and the projection is a few KiB per
layer, so int8 would save nothing worth that. The feature weights and every activation x
activation product (``phi(q) phi(k)^T``, the state contractions) stay float as well.

Weights are matched to the model by value, not by initializer name: torch's dynamo exporter
folds ``W.T`` into anonymous constants (``val_18``), and the torchscript exporter names them
``onnx::MatMul_836``. Quantization is an allow-list: a constant MatMul that matches no weight of
the model is never quantized, and the ones derived from attention buffers are also excluded
explicitly and reported by name.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from .attention_modules import class_name, is_attention
from .errors import ExportError
from .onnx_graph import onnxruntime_limits, opset_of
from .quant_budget import INT8_BUDGET, ParityBudget

QUANTIZE_MODES = ("int8",)
# By class name (see .attention_modules.class_name), so that TorchScript archives match too.
WEIGHT_CLASSES = ("Linear", "Embedding")
# Two unit vectors this close in |cosine| are the same direction up to float32 rounding.
_SAME_DIRECTION = 1.0 - 1e-5


@dataclass(frozen=True)
class QuantizationSettings:
    """The options given to ``onnxruntime.quantization.quantize_dynamic``, and the budget.

    Activations are always uint8 in dynamic mode. ``float_modules`` names Linear modules (by
    the last part of their path, e.g. ``k_proj``) that stay float even though they are weights.
    Each named scheme in :data:`INT8_SCHEMES` is one of these; ``python -m benchmarks.quantize``
    measures them all.
    """

    scheme: str = "custom"  # its name in INT8_SCHEMES
    mode: str = "int8"
    method: str = "dynamic"
    weight_type: str = "int8"
    activation_type: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = True
    op_types: tuple[str, ...] = ("MatMul",)
    float_modules: tuple[str, ...] = ()
    budget: ParityBudget = INT8_BUDGET  # what validation holds the graph to (.quant_budget)

    def to_json(self) -> dict:
        return asdict(self) | {
            "op_types": list(self.op_types),
            "float_modules": list(self.float_modules),
        }


# The int8 schemes, by name. The default must hold its budget on every CPU ONNX Runtime runs on,
# because the budget is checked on the exporting machine and the graph then runs elsewhere.
# ONNX Runtime's x86 U8S8 kernels without AVX-512 VNNI (AVX2, and the browser's wasm SIMD) sum
# pairs of uint8 x int8 products into int16 with saturation: 2 x 255 x 127 overflows it, and the
# sample char-LM's attention state was then off by 53% (rel RMS). Weights in 7 bits
# (``reduce_range``: |w| <= 64) keep every pair sum within int16 (2 x 255 x 64 = 32640), so the
# integer product is exact on every kernel and the result no longer depends on the CPU. It costs
# one bit of weight precision; README "Quantization" has the figures of every scheme.
INT8_SCHEMES: dict[str, QuantizationSettings] = {
    settings.scheme: settings
    for settings in (
        QuantizationSettings("u8s8-7bit"),
        QuantizationSettings("u8s8", reduce_range=False),
        QuantizationSettings("u8u8", weight_type="uint8", reduce_range=False),
        QuantizationSettings("u8s8-7bit-per-tensor", per_channel=False),
        QuantizationSettings(
            "u8s8-float-kv", reduce_range=False, float_modules=("k_proj", "v_proj")
        ),
    )
}
DEFAULT_SCHEME = "u8s8-7bit"
DEFAULT_SETTINGS = INT8_SCHEMES[DEFAULT_SCHEME]


@dataclass
class QuantizedGraph:
    """The quantized model and what happened to each constant MatMul of the float graph."""

    model: onnx.ModelProto
    settings: QuantizationSettings
    quantized: dict[str, str]  # node name -> weight's module path (``blocks.0.ff.0``)
    kept_float: dict[str, str] = field(default_factory=dict)  # node name -> why
    linear_layers: int = 0  # nn.Linear modules of the model

    def summary(self) -> str:
        """One progress line: what became int8 and what stayed float."""
        scheme = "per channel" if self.settings.per_channel else "per tensor"
        attention = sum(why.startswith("attention") for why in self.kept_float.values())
        return (
            f"{len(self.quantized)} of {self.linear_layers} Linear MatMuls to int8 weights "
            f"(dynamic, {scheme}); float: {attention} attention-projection MatMuls, "
            f"{len(self.kept_float) - attention} other constant MatMuls"
        )

    def to_json(self) -> dict:
        """The manifest's ``quantization`` entry."""
        return self.settings.to_json() | {
            "formats": ["onnx"],
            "float_formats": ["torchscript"],
            "linear_layers": self.linear_layers,
            "quantized_matmuls": len(self.quantized),
            "quantized_layers": sorted(set(self.quantized.values())),
            "float_constant_matmuls": [
                {"node": node, "reason": why} for node, why in sorted(self.kept_float.items())
            ],
        }


def int8_settings(scheme: str | None) -> QuantizationSettings:
    """The settings of a named scheme (None: the default); an unknown name is an ExportError."""
    if scheme is None:
        return DEFAULT_SETTINGS
    if scheme not in INT8_SCHEMES:
        raise ExportError(f"--int8-scheme must be one of {', '.join(INT8_SCHEMES)}, got {scheme!r}")
    return INT8_SCHEMES[scheme]


def parse_quantize(value: str | None) -> str | None:
    """``None``/``"none"`` -> None, ``"int8"`` -> ``"int8"``; anything else is an ExportError."""
    if value is None or value == "none":
        return None
    if value not in QUANTIZE_MODES:
        raise ExportError(f"--quantize must be none or {', '.join(QUANTIZE_MODES)}, got {value!r}")
    return value


def _weights(module: nn.Module) -> dict[tuple, str]:
    """``(shape, dtype, bytes) -> module path`` of every weight, as ``W.T`` (MatMul's B).

    A Linear computes ``x @ W.T``: its MatMul B is ``W.T``. An Embedding table reused as the
    output projection (tied weights) appears the same way.
    """
    found: dict[tuple, str] = {}
    for path, sub in module.named_modules():
        weight = getattr(sub, "weight", None)
        if class_name(sub) in WEIGHT_CLASSES and weight is not None and weight.dim() == 2:
            array = np.ascontiguousarray(weight.detach().cpu().numpy().T)
            found.setdefault(_key(array), path.removeprefix("model.") or "<model>")
    return found


def _key(array: np.ndarray) -> tuple:
    return array.shape, array.dtype.str, array.tobytes()


def _attention_buffers(module: nn.Module) -> dict[str, np.ndarray]:
    """Every 2-D-or-more buffer of every attention module, as rows of length ``dim_head``."""
    found = {}
    for path, sub in module.named_modules():
        if not is_attention(sub):
            continue
        for name, buffer in sub.named_buffers():
            if buffer.dim() >= 2 and buffer.is_floating_point():
                rows = buffer.detach().float().cpu().numpy()
                found[f"{path.removeprefix('model.')}.{name}"] = rows.reshape(-1, rows.shape[-1])
    return found


def _derived_from(constant: np.ndarray, rows: np.ndarray) -> bool:
    """Whether every column of ``constant (d, K)`` is a multiple of some row of ``rows (R, d)``.

    Covers what the feature maps do to a projection before it reaches a MatMul: transposing,
    scaling (``b w``), and stacking ``[w, -w]`` (hyperbolic).
    """
    if constant.ndim != 2 or constant.shape[0] != rows.shape[1]:
        return False
    columns = constant.astype(np.float64)
    columns = columns / np.maximum(np.linalg.norm(columns, axis=0, keepdims=True), 1e-30)
    unit_rows = rows.astype(np.float64)
    unit_rows = unit_rows / np.maximum(np.linalg.norm(unit_rows, axis=1, keepdims=True), 1e-30)
    return bool((np.abs(unit_rows @ columns).max(axis=0) >= _SAME_DIRECTION).all())


def _attention_source(constant: np.ndarray, buffers: dict[str, np.ndarray]) -> str | None:
    for name, rows in buffers.items():
        if _derived_from(constant, rows) or _derived_from(constant.T, rows):
            return name
    return None


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give every unnamed node a unique name: quantize_dynamic selects nodes by name."""
    taken = {node.name for node in graph.node if node.name}
    for index, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _gemm_as_matmul(graph: onnx.GraphProto, index: int, weight: np.ndarray) -> onnx.NodeProto:
    """Replace the plain Gemm at ``index`` (``A @ op(B) + C``) by MatMul (+ Add); return the MatMul.

    onnxruntime's dynamic quantizer has no integer Gemm, and exporters write 2-D Linear layers
    (a classifier on pooled features) as Gemm. ``weight`` is ``op(B)``, ``(K, N)``.
    """
    gemm = graph.node[index]
    b_name = f"{gemm.name}.weight_t"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), b_name))
    has_bias = len(gemm.input) > 2 and gemm.input[2]
    product = f"{gemm.output[0]}.matmul" if has_bias else gemm.output[0]
    matmul = onnx.helper.make_node(
        "MatMul", [gemm.input[0], b_name], [product], name=f"{gemm.name}.matmul"
    )
    replacement = [matmul]
    if has_bias:
        replacement.append(
            onnx.helper.make_node(
                "Add", [product, gemm.input[2]], [gemm.output[0]], name=f"{gemm.name}.bias"
            )
        )
    del graph.node[index]
    for offset, node in enumerate(replacement):
        graph.node.insert(index + offset, node)
    return matmul


def _plain_gemm_weight(node: onnx.NodeProto, b: np.ndarray) -> np.ndarray | None:
    """``op(B)`` of a Gemm that is exactly ``A @ op(B) + C``; None for any other Gemm."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
        return None
    return b.T if attrs.get("transB", 0) else b


def classify_matmuls(
    model: onnx.ModelProto, module: nn.Module, float_modules: tuple[str, ...] = ()
) -> tuple[dict[str, str], dict[str, str]]:
    """Sort the constant-B MatMul/Gemm nodes of ``model`` (in place: nodes get names, and Gemms
    on a weight become MatMul + Add) into ``(to_quantize, kept_float)``.

    ``to_quantize`` maps node name -> module path of the weight; ``kept_float`` maps node name
    -> why it stays float (an attention buffer, a weight of a module named in ``float_modules``,
    or a constant that is no weight of the model).
    """
    graph = model.graph
    _name_nodes(graph)
    constants = {init.name: init for init in graph.initializer}
    weights = _weights(module)
    buffers = _attention_buffers(module)
    to_quantize: dict[str, str] = {}
    kept_float: dict[str, str] = {}
    for index in range(len(graph.node)):
        node = graph.node[index]
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in constants:
            continue
        b = numpy_helper.to_array(constants[node.input[1]])
        operand = b if node.op_type == "MatMul" else _plain_gemm_weight(node, b)
        path = None if operand is None else weights.get(_key(np.ascontiguousarray(operand)))
        if path is not None and path.rsplit(".", 1)[-1] in float_modules:
            kept_float[node.name] = f"weight of {path}, kept float by the scheme"
            continue
        if path is not None:
            if node.op_type == "Gemm":
                node = _gemm_as_matmul(graph, index, operand)
            to_quantize[node.name] = path
            continue
        source = _attention_source(b, buffers) if b.ndim == 2 else None
        kept_float[node.name] = (
            f"attention buffer {source}" if source else "constant that is no weight of the model"
        )
    return to_quantize, kept_float


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """quantize_dynamic logs a pre-processing advert on the root logger at every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(
    model: onnx.ModelProto,
    module: nn.Module,
    settings: QuantizationSettings = DEFAULT_SETTINGS,
) -> QuantizedGraph:
    """Quantize the weight MatMuls of the float32 ``model`` exported from ``module``.

    The graph keeps its opset, IR version (capped at what onnxruntime loads), producer, and the
    names, dtypes and symbolic dims of its inputs and outputs. Raises :class:`ExportError` when
    the graph is not float32 or holds no weight MatMul.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_model = onnx.ModelProto()
    float_model.CopyFrom(model)
    to_quantize, kept_float = classify_matmuls(float_model, module, settings.float_modules)
    if not to_quantize:
        # quantize_dynamic reads an empty nodes_to_quantize as "every node": never pass one.
        raise ExportError(
            "--quantize int8 found no MatMul on an nn.Linear weight in the graph: nothing to "
            "quantize"
        )
    constants = {init.name: init.data_type for init in float_model.graph.initializer}
    b_types = {constants[n.input[1]] for n in float_model.graph.node if n.name in to_quantize}
    if b_types != {onnx.TensorProto.FLOAT}:
        names = sorted(onnx.helper.tensor_dtype_to_np_dtype(t).name for t in b_types)
        raise ExportError(
            f"--quantize int8 needs a float32 graph; its weights are {', '.join(names)}"
        )
    weight_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[settings.weight_type]
    large = float_model.ByteSize() > (1 << 30)
    with tempfile.TemporaryDirectory(prefix="favor-quantize-") as tmp, _quiet_quantizer():
        target = Path(tmp) / "quantized.onnx"
        quantize_dynamic(
            float_model,
            target,
            op_types_to_quantize=list(settings.op_types),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            weight_type=weight_type,
            nodes_to_quantize=sorted(to_quantize),
            nodes_to_exclude=sorted(kept_float),
            use_external_data_format=large,
            # The quantizer types tensors with ONNX's shape inference, which cannot type the
            # outputs of a contrib node (--fused-attention's LinearAttention); untyped tensors
            # here are float32 activations.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        quantized = onnx.load(str(target))
    _restore_interface(quantized, float_model)
    return QuantizedGraph(
        quantized, settings, to_quantize, kept_float, linear_layers=count_linear(module)
    )


def count_linear(module: nn.Module) -> int:
    """How many ``nn.Linear`` modules ``module`` holds (TorchScript archives included)."""
    return sum(class_name(sub) == "Linear" for sub in module.modules())


def _restore_interface(quantized: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Undo what quantize_dynamic changes beyond the MatMuls: producer, IR version, value_info.

    Its shape inference fills value_info with the exporter's internal symbols, which the runtime
    needs none of; inputs and outputs are copied back so their dim names are the export's.
    """
    before, after = opset_of(original), opset_of(quantized)
    if after != before:
        raise ExportError(f"quantization changed the graph's opset from {before} to {after}")
    del quantized.graph.value_info[:]
    for target, source in ((quantized.graph.input, original.graph.input),
                           (quantized.graph.output, original.graph.output)):  # fmt: skip
        by_name = {value.name: value for value in source}
        for value in target:
            if value.name in by_name:
                value.CopyFrom(by_name[value.name])
    _, max_ir = onnxruntime_limits()
    quantized.ir_version = min(quantized.ir_version, original.ir_version, max_ir)
    quantized.producer_name = original.producer_name
    quantized.producer_version = original.producer_version
