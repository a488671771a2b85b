"""The ``ensembles-tabular`` config refuses bad fields, naming them."""

import dataclasses

import pytest

from common.recipes.ensembles_tabular import EnsemblesConfig


@pytest.mark.parametrize("field,value", [("folds", 1), ("n_trees", 0), ("bv_noise", -1.0),
                                         ("classifiers", ("xgboost",)),
                                         ("regression", ("iris",)), ("deep_hidden", ())])
def test_config_validate_names_the_field(field, value):
    EnsemblesConfig().validate()
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(EnsemblesConfig(), **{field: value}).validate()
