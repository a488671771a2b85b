"""The shared suite of the recipe registry: every registered recipe (all areas, through
the CLI's plugin loading) has valid configs at both scales, a README claim, and a
``--show-config`` listing; registering a recipe is how it gets these checks."""

import dataclasses

import pytest

from common import cli
from common.recipe import RECIPES, config_lines, validate_config

cli.load_plugins("jaxatlas.recipes")
NAMES = RECIPES.names()


def test_every_area_registers_recipes():
    assert len(NAMES) >= 12 and {"digits-mlp", "ddpg-pendulum", "sde-2d",
                                 "detr-shapes"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_configs_validate_at_both_scales(name):
    recipe = RECIPES.get(name)
    assert set(recipe.configs) == {"quick", "full"}
    for config in recipe.configs.values():
        assert dataclasses.is_dataclass(config)
        validate_config(config)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_states_its_claim_and_describes_itself(name):
    recipe = RECIPES.get(name)
    assert len(recipe.description) > 20 and len(recipe.claim) > 10


@pytest.mark.parametrize("name", NAMES)
def test_show_config_lists_every_set_key(name, capsys):
    assert cli.main(["run", name, "--show-config"]) == 0
    out = capsys.readouterr().out
    for line in config_lines(RECIPES.get(name).configs["quick"]):
        assert line in out
