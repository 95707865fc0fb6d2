"""AttentionConfig: in step with FavorAttention's keywords, JSON round trip, per-layer seeds."""

import inspect
import json

import pytest

from favor.ops.attention import FavorAttention
from favor.ops.attention_config import AttentionConfig

# Where a layer sits, not how it attends: the model decides these per layer.
PER_LAYER = {"self", "dim_head", "causal"}


def test_fields_are_favor_attention_keywords_with_its_defaults():
    parameters = inspect.signature(FavorAttention.__init__).parameters
    keywords = {name: p.default for name, p in parameters.items() if name not in PER_LAYER}
    assert AttentionConfig().to_json() == keywords


def test_json_round_trip():
    config = AttentionConfig(nb_features=8, kernel="trigrf", orf_norm="sqrt_d", seed=3)
    assert AttentionConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_fields_missing_from_json_take_their_defaults():
    # A config saved before orf_norm existed was drawn with the default norm.
    saved = {"nb_features": 8, "kernel": "posrf", "projection": "orf", "seed": 0, "chunk_size": 4}
    assert AttentionConfig.from_json(saved).orf_norm == "chi"


BAD_JSON = {
    "unknown-field": ({"nb_feature": 8}, r"unknown attention option\(s\) 'nb_feature'"),
    "not-an-object": ([8, "posrf"], "must be a JSON object, got list"),
}


@pytest.mark.parametrize(("data", "message"), BAD_JSON.values(), ids=BAD_JSON.keys())
def test_bad_json_is_a_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        AttentionConfig.from_json(data)


def test_replace_refuses_unknown_options_like_a_bad_keyword():
    with pytest.raises(TypeError, match=r"unknown attention option\(s\) 'kernal'; the options"):
        AttentionConfig().replace(kernal="relu")


def test_layers_draw_from_consecutive_seeds():
    config = AttentionConfig(seed=10, nb_features=8)
    assert [config.for_layer(i).seed for i in range(3)] == [10, 11, 12]
    assert config.for_layer(2).replace(seed=10) == config


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_build_gives_the_configured_attention(causal):
    config = AttentionConfig(nb_features=8, kernel="hyperbolic", orf_norm="sqrt_d", chunk_size=4)
    attention = config.build(16, causal=causal)
    assert attention.config() == {"dim_head": 16, "causal": causal, **config.to_json()}
