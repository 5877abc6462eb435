"""Recipes: the YAML is the saved form of the list of configs, and bad recipes are refused
with the key or stage named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compress.prune import WandaConfig
from compress.quant import RTNConfig
from toolkit.errors import UserError
from toolkit.eval import EvalProtocol
from toolkit.recipe import CalibrationSpec, Recipe, load_recipe, recipe_from_dict

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


def test_recipe_round_trips_through_yaml(tmp_path):
    recipe = Recipe([WandaConfig(sparsity=0.6, ignore=("down_proj",)),
                     RTNConfig(bits=3, group_size=64, symmetric=True)],
                    CalibrationSpec(8, 128, 5), EvalProtocol(256, None), model="fake-llama")
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    again = load_recipe(path)
    assert again == recipe
    assert again.to_dict() == recipe.to_dict()
    assert again.name == "wanda+rtn"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load_and_round_trip(path):
    recipe = load_recipe(path)
    assert recipe_from_dict(yaml.safe_load(recipe.to_yaml())) == recipe


def test_shipped_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"wanda50-gptq4.yaml", "palettize-mixed-3.7.yaml"} <= names


@pytest.mark.parametrize("data, needle", [
    ({"stages": [{"method": "wanda"}], "stagse": []}, "unknown key 'stagse'"),
    ({"stages": [{"method": "wanda", "sparsty": 0.5}]}, "stage 1: unknown key 'sparsty'"),
    ({"stages": [{"method": "rtn", "bits": 4}, {"method": "gptq", "bitz": 4}]},
     "stage 2: unknown key 'bitz'"),
    ({"stages": [{"method": "wanda"}], "calibration": {"samples": 4, "sed": 1}},
     "calibration: unknown key 'sed'"),
    ({"stages": [{"method": "wanda"}], "eval": {"window": 4}}, "eval: unknown key 'window'"),
    ({"stages": [{"method": "wanda"}], "calibration": {"samples": 0}}, "positive integer"),
    ({"stages": [{"method": "prune-all"}]}, "unknown method 'prune-all'"),
    ({"stages": [{"sparsity": 0.5}]}, "stage 1 must be a mapping with a `method:` key"),
    ({"stages": []}, "non-empty list"),
    ({"model": "x"}, "non-empty list"),
    ([{"method": "wanda"}], "must be a mapping"),
    ({"stages": [{"method": "rtn", "bits": 5}]}, "bits 5 is not supported"),
    ({"stages": [{"method": "rtn"}, {"method": "wanda"}]},
     "stage 2 (wanda) comes after quantization (rtn)"),
])
def test_bad_recipes_name_the_problem(data, needle):
    with pytest.raises(UserError, match=None) as info:
        recipe_from_dict(data)
    assert needle in str(info.value)


def test_invalid_yaml_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stages: [method: wanda\n", encoding="utf-8")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_recipe(path)
    with pytest.raises(UserError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
