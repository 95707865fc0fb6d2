"""Command-line entry points: ``favor-export`` and ``favor-validate``.

Exit codes: 0 success, 1 the export does not match PyTorch, 2 bad input, usage or environment
(disk full, file-size limit), 3 an internal error (a bug: please report it with the ``--debug``
traceback), 130 interrupted (SIGINT), 143 terminated (SIGTERM). A stopped run cleans up first.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .errors import ExportError, Terminated, ValidationError, exception_chain, one_line
from .files import atomic_write_bytes, writing
from .formats import FORMAT_REGISTRY
from .onnx_graph import EXPORTERS, MIN_OPSET, MIN_OPSET_BY_EXPORTER
from .options import DEFAULT_DTYPE, DEFAULT_EXPORTER, DEFAULT_FORMATS, DEFAULT_OPSET
from .precision import ALIASES, BUDGETS
from .quant_budget import INT8_BUDGET
from .quantize import DEFAULT_SCHEME, INT8_SCHEMES, QUANTIZE_MODES

if TYPE_CHECKING:
    from .validation import ValidationReport

INTERNAL_ERROR = 3
# --external-data's choices, as export()'s ``external_data``.
EXTERNAL_DATA = {"auto": None, "always": True, "never": False}
# --dtype's short names, by the dtype they stand for.
SHORT_DTYPES = {dtype: short for short, dtype in ALIASES.items()}


class Reporter:
    """Progress lines on stderr, one per stage, with the time since start."""

    def __init__(self, program: str, quiet: bool) -> None:
        self.program, self.quiet, self.start = program, quiet, time.perf_counter()

    def __call__(self, stage: str, message: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self.start
            click.echo(f"{self.program}: {elapsed:6.1f}s {stage:<9} {message}", err=True)


# 128 + the signal number, as shells report a process that a signal stopped.
INTERRUPTIONS: dict[type[BaseException], tuple[int, str]] = {
    KeyboardInterrupt: (130, "interrupted"),
    Terminated: (143, "terminated"),
}
# OSErrors that mean the environment, not a bug: a full disk, a file-size limit, permissions.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)


def _raise_terminated(_signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the cleanup finish
    raise Terminated


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated`, as SIGINT raises KeyboardInterrupt, so that cleanup
    (the staging directory's ``finally``) runs; a file-size limit fails writes with EFBIG
    instead of killing the process (Python's default, unless an embedding host changed it)."""
    if threading.current_thread() is not threading.main_thread():  # handlers need the main one
        yield
        return
    handlers = {signal.SIGTERM: _raise_terminated, signal.SIGXFSZ: signal.SIG_IGN}
    previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _failure(error: BaseException) -> tuple[int, str, str]:
    """``(exit code, message for --json, line for stderr)`` for ``error``."""
    # torch's exporters may wrap a KeyboardInterrupt into an error of their own.
    for link in exception_chain(error, hidden=True):
        for kind, (code, what) in INTERRUPTIONS.items():
            if isinstance(link, kind):
                return code, what, f"{what}; nothing was written"
    if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
        error = ExportError(f"{error.filename}: {error.strerror}" if error.filename else str(error))
    if isinstance(error, ExportError):
        return error.exit_code, str(error), f"error: {error}"
    message = f"internal error: {one_line(error)}"
    return (
        INTERNAL_ERROR,
        message,
        f"{message} (run again with --debug for the traceback, and please report it)",
    )


def _echo_json_failure(code: int, message: str, report: ValidationReport | None = None) -> None:
    payload = {"ok": False, "exit_code": code, "error": message}
    if report is not None:
        payload["validation"] = report.to_json()
    click.echo(json.dumps(payload, indent=2))


@contextlib.contextmanager
def _errors_to_exit_codes(program: str, debug: bool, as_json: bool) -> Iterator[None]:
    """One line on stderr and an exit code for every failure, instead of a traceback
    (``--debug`` adds it, with the whole chain of causes); with ``as_json`` also a JSON object
    on stdout."""
    with _signals_as_exceptions():
        try:
            yield
        except (Exception, *INTERRUPTIONS) as error:
            if debug:
                traceback.print_exc()
            code, message, line = _failure(error)
            report = getattr(error, "report", None)
            if as_json:
                _echo_json_failure(code, message, report)
            elif report is not None:
                click.echo(report.table(), err=True)
            click.echo(f"{program}: {line}", err=True)
            sys.exit(code)


class Command(click.Command):
    """A command whose usage errors are one line and exit code 2, like any other bad input, and
    print a JSON object on stdout under ``--json``."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        as_json = "--json" in args  # parsing consumes args
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            if as_json:
                _echo_json_failure(error.exit_code, error.format_message())
            click.echo(
                f"{info_name}: error: {error.format_message()} (see {info_name} --help)", err=True
            )
            sys.exit(error.exit_code)


class Tolerance(click.ParamType):
    """A finite float >= 0: a negative or NaN tolerance fails every comparison, an infinite
    one passes every comparison."""

    name = "FLOAT"

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number < 0:
            self.fail(f"{value} is not a tolerance: give a finite number >= 0", param, ctx)
        return number


def _common_options(func: Callable) -> Callable:
    options = [
        click.option(
            "--atol",
            type=Tolerance(),
            help="Absolute tolerance [default: per dtype, 1e-4 for float32].",
        ),
        click.option(
            "--rtol",
            type=Tolerance(),
            help="Relative tolerance [default: per dtype, 1e-4 for float32].",
        ),
        click.option(
            "--allow-module",
            "allow_modules",
            multiple=True,
            metavar="NAME",
            help="Also allow checkpoint classes from module NAME (and its submodules). Repeatable.",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow MODEL to be a whole pickled nn.Module. Unpickling runs code from the "
            "file: only for files you trust.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."),
        click.option("-q", "--quiet", is_flag=True, help="No progress output."),
        click.option("--debug", is_flag=True, help="Show Python tracebacks for errors."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


DTYPE_HELP = (
    "Precision of the weights and float inputs. fp16/bf16 keep attention internals in float32 "
    "(feature maps, sums, the causal CumSum, the LM state inputs/outputs) and are validated "
    "against the float32 model within atol = rtol = 50 epsilons of the dtype, "
    f"{BUDGETS['float16'][0]:.2g} (fp16) or {BUDGETS['bfloat16'][0]:.2g} (bf16), unless "
    "--atol/--rtol say otherwise. ONNX Runtime's CPU provider has no bf16 kernels: bf16 ONNX graphs are for "
    "CUDA; on CPU validate bf16 with --format torchscript."
)
QUANTIZE_HELP = (
    "int8: dynamic int8 quantization of the ONNX graph's weight MatMuls, every nn.Linear "
    "(q/k/v/out projections, feed-forward, LM head, classifier): int8 weights with a scale per "
    "output column, in 7 bits so that no CPU's int8 kernel saturates (AVX2 and wasm kernels "
    "sum pairs of products in int16), activations quantized to uint8 per call from their own "
    "range, no calibration data (--int8-scheme picks another scheme). The attention core "
    "stays float: the random-feature projection and feature maps, and every activation x "
    "activation product. The TorchScript archive stays "
    "float. int8 cannot meet float32's 1e-4, so the int8 graph is held to a parity budget "
    f"instead, per output and case: relative RMS error <= {INT8_BUDGET.rel_rms:g}, and for "
    f"logits mean KL <= {INT8_BUDGET.kl:g} nats and top-1 agreement >= {INT8_BUDGET.top1:.0%} "
    f"where PyTorch's top logit leads by > {INT8_BUDGET.top1_margin:g}; the float graph it "
    "came from is validated at the usual tolerances but not written. Needs --dtype fp32."
)


def _text_option(text: Path | None, no_text: bool) -> Path | bool | None:
    if text is not None and no_text:
        raise ExportError("--text and --no-text contradict each other")
    return False if no_text else text


EXPORT_HELP = """Export MODEL to ONNX, TorchScript and a manifest, validated against PyTorch.

MODEL is a favor checkpoint (favor.exporter.save_checkpoint), a TorchScript archive, or, with
--trust-pickle, a pickled nn.Module. Writes NAME.onnx, NAME.torchscript.pt and
NAME.manifest.json into the output directory, only after validation passes: a failed export
leaves the directory as it was.

\b
Examples:
  favor-export lm.pt --opset 17
      export a reference model (PerformerLM, PerformerEncoder): no declarations needed
  favor-export lm.pt -o dist/ --format onnx --exporter torchscript
  favor-export encoder.torchscript.pt --input x:batch,seq=128,256:float32
      other models declare each input as NAME:DIMS:DTYPE; a dim is a size, a symbol,
      or a symbol with the example size to trace at
  favor-export model.pt --input tokens:batch,seq:int64:0..32000 --allow-module mylab
      an integer input gives the range validation draws ids from, unless an
      nn.Embedding reads it (its size is the range)
  favor-export lm.pt --text tokenizer.json
      carry the tokenizer, so apps encode and decode text (favor-run generate --prompt);
      a vocab.json or tokenizer.json beside lm.pt is taken without asking
  favor-export lm.pt --dtype fp16
      half-precision weights; attention internals and the LM state stay float32
  favor-export lm.pt --quantize int8
      int8 weight MatMuls in the ONNX graph (about 3x smaller); attention stays float
  favor-export lm.pt --fused-attention
      each causal layer as one ONNX Runtime LinearAttention node (runs on ONNX Runtime only)
  favor-export performer_lm.pt --trust-pickle --calibration-data text.npy
      a pickled performer-pytorch model: converted to favor.ops (leak-free causal attention,
      streaming state), with a fidelity report against the original
  favor-export weights.pt --import-as performer_pytorch.PerformerLM --import-kwargs lm.json
      a performer-pytorch state_dict and its constructor arguments: nothing unpickled

\b
Causal LMs export one stateful graph: inputs tokens + state.*, outputs logits + new_state.*;
feed new_state.* back as state.* to continue (prefill any length, decode with seq=1).

\b
Exit codes: 0 exported and validated, 1 validation failed, 2 bad input or environment (disk
full), 3 internal error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). --json prints a JSON
object on failure too, with the error and the exit code.
"""


@click.command(
    cls=Command,
    help=EXPORT_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output directory [default: beside MODEL].",
)
@click.option(
    "--opset",
    type=int,
    default=DEFAULT_OPSET,
    show_default=True,
    help=f"ONNX opset: {MIN_OPSET} ({MIN_OPSET_BY_EXPORTER['dynamo']} for dynamo) up to the "
    "highest the installed onnxruntime runs.",
)
@click.option(
    "--name", help="Base name of the output files [default: MODEL's file name without suffix]."
)
@click.option(
    "--format",
    "formats",
    default=",".join(DEFAULT_FORMATS),
    show_default=True,
    help=f"What to write: {', '.join(FORMAT_REGISTRY)}, or several, comma-separated.",
)
@click.option(
    "--exporter",
    type=click.Choice(EXPORTERS),
    help=f"torch's ONNX exporter [default: {DEFAULT_EXPORTER}; torchscript for TorchScript input].",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME:DIMS:DTYPE",
    help="Declare an input (not needed for reference models). Repeatable, in forward's order.",
)
@click.option(
    "--validate/--no-validate",
    default=True,
    show_default=True,
    help="Compare with PyTorch over several batch sizes and lengths; fail on any miss.",
)
@click.option(
    "--fused-attention",
    is_flag=True,
    help="Write causal attention as ONNX Runtime's fused LinearAttention op (com.microsoft; "
    "ONNX's own op at opset 27+) instead of the portable chunked graph. Needs onnxruntime to run "
    "the graph and the dynamo exporter; validated the same way. Measure before choosing it: see "
    "README, Benchmarks.",
)
@click.option(
    "--static",
    is_flag=True,
    help="Also write fixed-shape graphs for mobile NPUs (NNAPI, CoreML): a causal LM's decode "
    "step and prefill chunk (NAME.decode.onnx, NAME.prefill.onnx) or an encoder's graph at a "
    "fixed length (NAME.static.onnx), sharing NAME.static.data; each with ONNX Runtime's mobile "
    "usability check. Same as --format ...,static.",
)
@click.option("--static-batch", type=int, help="Batch of the --static graphs.  [default: 1]")
@click.option(
    "--prefill-chunk",
    type=int,
    help="Tokens per call of a causal LM's --static prefill graph.  [default: 64]",
)
@click.option(
    "--static-seq",
    type=int,
    help="Length of an encoder's --static graph.  [default: the model's longest sequence]",
)
@click.option(
    "--external-data",
    type=click.Choice(list(EXTERNAL_DATA)),
    default="auto",
    show_default=True,
    help="Store weights beside the graph (auto: above 1 GiB).",
)
@click.option(
    "--dtype",
    type=click.Choice(list(ALIASES)),
    default=SHORT_DTYPES[DEFAULT_DTYPE],
    show_default=True,
    help=DTYPE_HELP,
)
@click.option(
    "--quantize",
    default="none",
    show_default=True,
    metavar=f"[{'|'.join(('none', *QUANTIZE_MODES))}]",
    help=QUANTIZE_HELP,
)
@click.option(
    "--int8-scheme",
    default=None,
    show_default=DEFAULT_SCHEME,
    metavar=f"[{'|'.join(INT8_SCHEMES)}]",
    help="How --quantize int8 quantizes. u8s8-7bit holds its budget on every CPU; u8s8 (8-bit "
    "weights) is more precise on CPUs with AVX-512 VNNI but saturates on AVX2 and wasm; u8u8 "
    "uses uint8 weights; -per-tensor uses one scale per weight; u8s8-float-kv keeps k_proj and "
    "v_proj float. Figures per scheme: python -m benchmarks.quantize.",
)
@click.option(
    "--import/--no-import",
    "import_foreign",
    default=True,
    show_default=True,
    help="Convert a model from another implementation (performer-pytorch's PerformerLM or "
    "Performer, or a module holding its SelfAttention/FastAttention layers) into favor.ops "
    "first, and report how close it is; --no-import exports the module as it is.",
)
@click.option(
    "--import-as",
    metavar="CLASS",
    help="MODEL is a bare state_dict of CLASS (e.g. performer_pytorch.PerformerLM), rebuilt "
    "from --import-kwargs: no unpickling, and no need for the foreign package.",
)
@click.option(
    "--import-kwargs",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE.json",
    help="--import-as CLASS's constructor arguments, as a JSON object.",
)
@click.option(
    "--calibration-data",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Token ids (.npy) or text (byte vocabularies) on which to measure an imported "
    "language model's next-token NLL and top-1 agreement with the original.",
)
@click.option(
    "--heal-steps",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Distill an imported causal LM from the original on --calibration-data for this many "
    "steps (CPU) before exporting; the fidelity report shows before and after.",
)
@click.option(
    "--text",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="How apps turn text into token ids, carried in the export: a character vocabulary (a "
    "JSON list of characters, token id = index) or a Hugging Face tokenizer.json.  [default: "
    "MODEL's NAME.tokenizer.json, NAME.vocab.json, tokenizer.json or vocab.json beside it, "
    "the first that fits]",
)
@click.option(
    "--no-text", is_flag=True, help="Carry no text handling, even one found beside MODEL."
)
@_common_options
def export_command(
    model,
    output,
    opset,
    name,
    formats,
    exporter,
    inputs,
    validate,
    fused_attention,
    static,
    static_batch,
    prefill_chunk,
    static_seq,
    external_data,
    dtype,
    quantize,
    int8_scheme,
    import_foreign,
    import_as,
    import_kwargs,
    calibration_data,
    heal_steps,
    text,
    no_text,
    atol,
    rtol,
    allow_modules,
    trust_pickle,
    as_json,
    quiet,
    debug,
) -> None:
    from .api import export

    report = Reporter("favor-export", quiet)
    with _errors_to_exit_codes("favor-export", debug, as_json):
        kwargs = None if import_kwargs is None else _json_object(import_kwargs, "--import-kwargs")
        result = export(
            model, output, opset=opset, name=name, formats=formats, exporter=exporter,
            inputs=inputs,
            validate_outputs=validate, atol=atol, rtol=rtol, allow_modules=allow_modules,
            trust_pickle=trust_pickle,
            external_data=EXTERNAL_DATA[external_data],
            dtype=dtype,
            fused_attention=fused_attention,
            quantize=quantize,
            int8_scheme=int8_scheme,
            import_foreign=import_foreign,
            import_as=import_as,
            import_kwargs=kwargs,
            calibration_data=calibration_data,
            heal_steps=heal_steps,
            text=_text_option(text, no_text),
            static=static, static_batch=static_batch, prefill_chunk=prefill_chunk,
            static_seq=static_seq,
            progress=report,
        )  # fmt: skip
        if result.fidelity is not None and not quiet and not as_json:
            click.echo(result.fidelity.table(), err=True)
        if result.report is not None and not quiet and not as_json:
            click.echo(result.report.table(), err=True)
        if as_json:
            payload = {
                "ok": True,
                "output_dir": str(result.output_dir),
                "files": {role: str(path) for role, path in result.files.items()},
                "manifest": str(result.manifest_path),
                "validation": None if result.report is None else result.report.to_json(),
                "fidelity": None if result.fidelity is None else result.fidelity.to_json(),
            }
            click.echo(json.dumps(payload, indent=2))
        elif not quiet:
            for path in [*result.files.values(), result.manifest_path]:
                click.echo(str(path))


def _json_object(path: Path, option: str) -> dict:
    """The JSON object in ``path``; an ExportError naming ``option`` otherwise."""
    try:
        value = json.loads(path.read_text())
    except OSError as error:
        raise ExportError(f"cannot read {option} {path}: {error.strerror}") from None
    except ValueError as error:
        raise ExportError(f"{option} {path} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ExportError(f"{option} {path} must hold a JSON object, got {type(value).__name__}")
    return value


VALIDATE_HELP = """Re-check an existing export against its PyTorch model, without re-exporting.

Runs the same sweep as export-time validation (batch sizes, lengths, prefill + decode for causal
LMs) after checking every file's sha256. Tolerances are --atol/--rtol or the defaults for the
export's dtype, and an int8 graph is held to its scheme's budget: never values read from the
export under test. The report starts with the tolerances used. Use it in CI after upgrading
torch or onnxruntime.

\b
Examples:
  favor-validate dist/ lm.pt
  favor-validate dist/ lm.pt --junit-xml parity.xml --json

\b
Exit codes: 0 parity holds, 1 parity fails, 2 bad input, 3 internal error, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM). --json prints a JSON object on failure too.
"""


@click.command(
    cls=Command,
    help=VALIDATE_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--name", help="Which export in EXPORT_DIR, when it holds several.")
@click.option(
    "--junit-xml",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the result as JUnit XML for CI.",
)
@click.option(
    "--import/--no-import",
    "import_foreign",
    default=True,
    show_default=True,
    help="Convert a foreign MODEL (performer-pytorch) as favor-export did; --no-import for "
    "exports made with --no-import.",
)
@click.option(
    "--calibration-data",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="The file an imported model was calibrated on at export (favor-export "
    "--calibration-data); required for such exports.",
)
@_common_options
def validate_command(
    export_dir,
    model,
    name,
    junit_xml,
    import_foreign,
    calibration_data,
    atol,
    rtol,
    allow_modules,
    trust_pickle,
    as_json,
    quiet,
    debug,
) -> None:
    from .api import validate_export

    report_progress = Reporter("favor-validate", quiet)
    with _errors_to_exit_codes("favor-validate", debug, as_json):
        report = validate_export(
            model, export_dir, name=name, atol=atol, rtol=rtol, allow_modules=allow_modules,
            trust_pickle=trust_pickle, import_foreign=import_foreign,
            calibration_data=calibration_data, progress=report_progress,
        )  # fmt: skip
        if junit_xml is not None:
            with writing(junit_xml):
                atomic_write_bytes(junit_xml, report.junit_xml().encode())
        if not report.passed:
            raise ValidationError("the export does not match PyTorch", report)
        if as_json:
            click.echo(json.dumps({"ok": report.passed, "validation": report.to_json()}, indent=2))
        elif not quiet:
            click.echo(report.table(), err=True)
