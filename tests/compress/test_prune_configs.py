"""Pruning configs: validation messages, registration, dict round-trip, unknown keys."""

from __future__ import annotations

import pytest

import compress.prune  # noqa: F401  (registers the methods)
from compress.config import MethodConfig, handler_for, registered_methods
from compress.errors import CompressError
from compress.prune import MagnitudeConfig, SparseGPTConfig, WandaConfig
from compress.stats import HESSIAN, SQ_NORM

CONFIGS = [MagnitudeConfig, WandaConfig, SparseGPTConfig]


def test_all_three_are_registered() -> None:
    methods = registered_methods()
    for config_type in CONFIGS:
        assert methods[config_type.method] is config_type
        assert callable(handler_for(config_type()))
        assert callable(config_type.prune_weight)
    assert MagnitudeConfig.needs == frozenset()
    assert WandaConfig.needs == frozenset({SQ_NORM})
    assert SparseGPTConfig.needs == frozenset({HESSIAN})


@pytest.mark.parametrize("config_type", CONFIGS)
@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"sparsity": 0.0}, "outside (0, 1)"),
        ({"sparsity": 1.0}, "outside (0, 1)"),
        ({"sparsity": -0.2}, "outside (0, 1)"),
        ({"pattern": "4:2"}, "0 < N < M"),
        ({"pattern": "0:4"}, "0 < N < M"),
        ({"pattern": "x"}, "is not N:M"),
        ({"pattern": "2:4", "sparsity": 0.6}, "means sparsity 0.5"),
        ({"pattern": "2:4", "layerwise": "owl"}, "N:M pattern"),
        ({"layerwise": "owl", "owl_lambda": 0.6}, "owl_lambda"),
        ({"layerwise": "owl", "owl_m": 0}, "owl_m"),
        ({"layerwise": "nope"}, "layerwise"),
        ({"ignore": ["("]}, "not a valid regex"),
    ],
)
def test_validation(config_type, kwargs, needle) -> None:
    with pytest.raises(CompressError) as err:
        config_type(**kwargs)
    assert needle in str(err.value)


def test_defaults_and_pattern_sparsity() -> None:
    assert WandaConfig().sparsity == 0.5
    config = WandaConfig(pattern="4:8")
    assert config.sparsity == 0.5 and config.nm == (4, 8)
    assert MagnitudeConfig(pattern="1:4").sparsity == 0.25
    assert WandaConfig(ignore="lm_head").ignore == ("lm_head",)
    assert WandaConfig(ignore=[r"\.0\.", "mlp"]).is_ignored("model.layers.0.self_attn.q_proj")


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"block_size": 0}, "block_size"),
        ({"block_size": 12.5}, "block_size"),
        ({"block_size": True}, "block_size"),
        ({"dampening": 0.0}, "dampening"),
        ({"dampening": -0.01}, "dampening"),
        ({"dampening": float("nan")}, "dampening"),
        ({"dampening": "0.01"}, "dampening"),
        ({"sparsity": 2.0, "block_size": 64}, "sparsity"),  # super's checks still run
    ],
)
def test_sparsegpt_knobs(kwargs, needle) -> None:
    with pytest.raises(CompressError) as err:
        SparseGPTConfig(**kwargs)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "config",
    [
        MagnitudeConfig(sparsity=0.37, ignore=("lm_head",)),
        WandaConfig(pattern="2:4", ignore=("lm_head", r"\.0\.")),
        WandaConfig(sparsity=0.7, layerwise="owl", owl_m=7.0, owl_lambda=0.1),
        SparseGPTConfig(sparsity=0.6, block_size=64, dampening=0.05),
        SparseGPTConfig(pattern="4:8"),
    ],
)
def test_round_trip(config) -> None:
    data = config.to_dict()
    assert data["method"] == config.method
    again = MethodConfig.from_dict(data)
    assert type(again) is type(config) and again == config


def test_unknown_key_is_named() -> None:
    data = WandaConfig().to_dict() | {"blocksize": 64}
    with pytest.raises(CompressError, match="'blocksize'"):
        MethodConfig.from_dict(data)
    with pytest.raises(CompressError, match="unknown method 'prune-it'"):
        MethodConfig.from_dict({"method": "prune-it"})
