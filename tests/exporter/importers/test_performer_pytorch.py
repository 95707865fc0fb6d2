"""performer-pytorch models converted to favor.ops: against the originals, and exported."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from favor.exporter import export
from favor.exporter.importers import ImportRefusedError, find_importer, import_module
from favor.runtime import Session
from tests.exporter.importers.foreign_models import (
    DIM,
    MAX_LEN,
    USER_INPUTS,
    VOCAB,
    AttentionBlock,
    FastAttentionBlock,
    WrappedPerformer,
    performer_lm,
    performer_stack,
    perturbed,
)


def _rel_error(actual: torch.Tensor | np.ndarray, expected: torch.Tensor | np.ndarray) -> float:
    """Largest difference over the largest magnitude of the expected value."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    return float((actual - expected).abs().max() / expected.abs().max())


def _foreign_classes(module: nn.Module) -> set[str]:
    """Names of the performer-pytorch classes left in ``module``."""
    return {
        type(m).__qualname__
        for m in module.modules()
        if type(m).__module__.split(".")[0] == "performer_pytorch"
    }


def _tokens(batch: int, length: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _real_tokens(batch: int, length: int) -> torch.Tensor:
    """performer's ``mask (B, N)``, True at real tokens: row ``i`` has ``length - 7 i`` of them."""
    return torch.arange(length) < torch.tensor([[length - 7 * i] for i in range(batch)])


# --- conversion ------------------------------------------------------------------------------

# Options of both classes; bidirectional unless causal (whose relu and identity maps are exact).
STACK_OPTIONS = {
    "defaults": {},
    "relu-kernel": {"generalized_attention": True},
    "no-projection": {"no_projection": True},
    "scalenorm": {"use_scalenorm": True},
    "rezero": {"use_rezero": True},
    "glu": {"ff_glu": True},
    "ff-mult-2": {"ff_mult": 2},
    "biases": {"qkv_bias": True, "attn_out_bias": True},
    "no-biases": {"qkv_bias": False, "attn_out_bias": False},
    "ff-chunks": {"ff_chunks": 2},
    "default-features": {"nb_features": None},
    "causal-relu-kernel": {"causal": True, "generalized_attention": True},
    "causal-no-projection": {"causal": True, "no_projection": True},
}
LM_OPTIONS = {
    **STACK_OPTIONS,
    "tied-embedding": {"tie_embed": True},
    "absolute-positions": {"rotary_position_emb": False},
}


@pytest.mark.parametrize("options", LM_OPTIONS.values(), ids=LM_OPTIONS)
def test_an_imported_performer_lm_computes_the_original(options):
    original = performer_lm(**options)
    imported = import_module(original)
    assert _foreign_classes(imported) == set()
    tokens = _tokens(3, 50)
    masks = [None] if options.get("causal") else [None, _real_tokens(3, 50)]
    with torch.no_grad():
        for mask in masks:
            assert _rel_error(imported(tokens, mask=mask), original(tokens, mask=mask)) <= 1e-5


@pytest.mark.parametrize("options", STACK_OPTIONS.values(), ids=STACK_OPTIONS)
def test_an_imported_performer_stack_computes_the_original(options):
    original = performer_stack(**options)
    imported = import_module(original)
    assert _foreign_classes(imported) == set()
    x = torch.randn(3, 50, DIM, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert _rel_error(imported(x), original(x)) <= 1e-5


def test_a_bare_fast_attention_in_a_user_module_is_converted_and_measured():
    torch.manual_seed(0)
    original = perturbed(FastAttentionBlock())
    imported = import_module(original)
    assert _foreign_classes(imported) == set()
    x = torch.randn(2, 30, DIM, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert _rel_error(imported(x), original(x)) <= 1e-5
    fidelity = find_importer(original).fidelity(original, imported, None)
    assert fidelity.measurements and fidelity.exact and fidelity.misses == []


# (attention options, the option the error names)
REFUSED_LAYERS = {
    "elu-kernel": ({"generalized_attention": True, "kernel_fn": nn.ELU()}, "kernel_fn"),
    "local-heads": ({"local_heads": 1}, "local_attn_heads"),
}


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize(("options", "option"), REFUSED_LAYERS.values(), ids=REFUSED_LAYERS)
def test_a_user_modules_attention_layer_favor_cannot_reproduce_is_refused(options, option, causal):
    torch.manual_seed(0)
    with pytest.raises(ImportRefusedError, match=f"{option}="):
        import_module(AttentionBlock(causal=causal, **options).eval())


def test_importing_runs_no_foreign_code_and_rebuilds_without_the_foreign_package(
    causal_lm, tmp_path
):
    weights = tmp_path / "weights.pt"
    torch.save(causal_lm.state_dict(), weights)
    script = f"""
import sys
import favor.exporter
from favor.exporter.checkpoint import load_state_dict
from favor.exporter.importers import find_importer, importer_for_class
from favor.ops.models import PerformerLM
assert "performer_pytorch" not in sys.modules, "importing favor.exporter imported performer_pytorch"
assert find_importer(PerformerLM(40, 32, 2, 2)) is None
sys.modules["performer_pytorch"] = None  # any import of it now fails
kwargs = dict(num_tokens=40, max_seq_len=64, dim=32, depth=2, heads=2, dim_head=16,
              nb_features=16, causal=True)
importer = importer_for_class("performer_pytorch.PerformerLM")
model = importer.from_state_dict("performer_pytorch.PerformerLM", kwargs, load_state_dict({str(weights)!r}))
print(type(model).__module__, type(model).__name__)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["favor.ops.performer_compat", "CompatLM"]


# --- exported -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_export(tmp_path_factory):
    """A bidirectional PerformerLM and its export (torchscript exporter)."""
    original = performer_lm()
    out = tmp_path_factory.mktemp("performer-encoder")
    return original, export(original, out, name="encoder", exporter="torchscript")


def test_a_bidirectional_performer_lm_exports_exactly_with_its_own_inputs(encoder_export):
    _, result = encoder_export
    assert result.report.passed
    assert result.manifest.kind.value == "module"
    assert [t.name for t in result.manifest.inputs] == ["tokens", "mask"]
    assert result.manifest.input("mask").sampler.value == "keep-mask"
    assert result.fidelity.exact and result.fidelity.misses == []


def test_the_exported_mask_is_performers_mask(encoder_export):
    original, result = encoder_export
    tokens, real = _tokens(3, 50), _real_tokens(3, 50)
    logits = Session(result.output_dir).run(tokens=tokens.numpy(), mask=real.numpy())["logits"]
    with torch.no_grad():
        masked, unmasked = original(tokens, mask=real), original(tokens)
    assert _rel_error(logits, masked) <= 1e-5
    assert _rel_error(logits, unmasked) > 1e-3  # the mask reached the graph


# (model, declared inputs, the fidelity rows' path prefix)
MODULES = {
    "stack-bidirectional": (performer_stack, [], "model"),
    "stack-causal": (lambda: performer_stack(causal=True), [], "model"),
    "performer-in-a-user-module": (lambda: perturbed(WrappedPerformer()), USER_INPUTS, "body"),
    "causal-attention-in-a-user-module": (
        lambda: perturbed(AttentionBlock(causal=True)),
        USER_INPUTS,
        "attn",
    ),
}


def _has_causal_attention(module: nn.Module) -> bool:
    return any(getattr(m, "causal", False) for m in module.modules())


@pytest.fixture(scope="module", params=MODULES.values(), ids=MODULES)
def module_export(request, tmp_path_factory):
    """A performer stack or user module, its export (torchscript exporter), and the path its
    fidelity rows name."""
    make, inputs, measured = request.param
    torch.manual_seed(0)
    original = make()
    out = tmp_path_factory.mktemp("performer-module")
    return original, export(original, out, exporter="torchscript", inputs=inputs), measured


def test_a_module_export_validates_with_the_favor_layers(module_export):
    original, result, _ = module_export
    assert result.report.passed
    assert result.manifest.kind.value == "module"
    assert _foreign_classes(import_module(original)) == set()


def test_a_module_exports_fidelity_names_what_it_measured(module_export):
    original, result, measured = module_export
    causal = _has_causal_attention(original)
    assert result.fidelity.exact is not causal
    labels = [m.inputs for m in result.fidelity.measurements]
    assert labels and all(label.startswith(f"{measured}: ") for label in labels)
    if not causal:
        assert result.fidelity.misses == []


def test_a_converted_module_computes_the_original_or_reads_no_later_input(module_export):
    original, _, _ = module_export
    imported = import_module(original)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 40, DIM, generator=generator)
    later = x.clone()
    later[:, 25:] = torch.randn(2, 15, DIM, generator=generator)
    with torch.no_grad():
        if not _has_causal_attention(original):
            assert _rel_error(imported(x), original(x)) <= 1e-5
        else:
            assert torch.equal(imported(x)[:, :25], imported(later)[:, :25])


# --- leaks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("export_fixture", ["causal_export", "calibrated_export"])
def test_the_exported_causal_import_reads_no_later_token_where_performer_does(
    export_fixture, request
):
    causal_export = request.getfixturevalue(export_fixture)
    assert causal_export.result.exit_code == 0, causal_export.result.output
    session = Session(causal_export.out)
    t = 20
    tokens = _tokens(2, MAX_LEN)
    later = tokens.clone()
    later[:, t:] = (tokens[:, t:] + 1 + _tokens(2, MAX_LEN - t, seed=3) % (VOCAB - 1)) % VOCAB
    assert (later[:, t:] != tokens[:, t:]).all()
    exported = [
        session.run(tokens=ids.numpy(), **session.initial_state(2))["logits"]
        for ids in (tokens, later)
    ]
    assert exported[0].dtype == np.float32
    assert np.array_equal(exported[0][:, :t], exported[1][:, :t])
    assert not np.array_equal(exported[0][:, t:], exported[1][:, t:])
    with torch.no_grad():
        original = [causal_export.original(ids) for ids in (tokens, later)]
    assert not torch.equal(original[0][:, :t], original[1][:, :t])
