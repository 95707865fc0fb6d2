"""Which submodules are attention layers, in Python models and in their TorchScript."""

import io
import warnings

import pytest
import torch
from torch import nn

from favor.exporter.attention_modules import class_name, is_attention
from favor.ops import FavorAttention, LaraAttention, MultiheadFavorAttention
from favor.ops.rotary import RotaryEmbedding


class Layers(nn.Module):
    """Both attention classes beside modules that are not attention."""

    def __init__(self) -> None:
        super().__init__()
        self.favor = FavorAttention(8, 16)
        self.lara = LaraAttention(8, 16)
        self.linear = nn.Linear(8, 8)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """``q (B, H, N, 8)`` -> ``(B, H, N, 8)``."""
        return self.favor(q, q, q) + self.lara(q, q, q) + self.linear(q)


def _traced() -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the shape checks
        return torch.jit.trace(Layers().eval(), (torch.randn(1, 2, 5, 8),), check_trace=False)


def _loaded() -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(_traced(), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


MODELS = {"python": lambda: Layers().eval(), "traced": _traced, "loaded-archive": _loaded}


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS)
def test_attention_layers_are_found_in_python_and_torchscript(model):
    found = {path: is_attention(sub) for path, sub in model().named_modules()}
    assert found == {"": False, "favor": True, "lara": True, "linear": False}


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS)
def test_class_names_survive_torchscript(model):
    names = {path: class_name(sub) for path, sub in model().named_modules()}
    assert names == {
        "": "Layers",
        "favor": "FavorAttention",
        "lara": "LaraAttention",
        "linear": "Linear",
    }


OTHERS = {
    "linear": lambda: nn.Linear(8, 8),
    "rotary": lambda: RotaryEmbedding(8),
    # Its q/k/v/out projections are ordinary weights; only its inner FavorAttention is attention.
    "multihead-wrapper": lambda: MultiheadFavorAttention(16, 2),
    "torch-multihead": lambda: nn.MultiheadAttention(16, 2),
}


@pytest.mark.parametrize("make", OTHERS.values(), ids=OTHERS)
def test_other_modules_are_not_attention(make):
    assert not is_attention(make())
