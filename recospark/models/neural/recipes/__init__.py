"""The recipes, by model name: one line per recipe here (and one estimator pair in `estimator.py`).

Recipe modules import without torch (see `recospark.models.neural.recipe`), so importing this
registry is cheap and works without the `neural` extra.
"""

from __future__ import annotations

from recospark.models.neural.recipe import Recipe
from recospark.models.neural.recipes.autoencoders import AUTOREC, MULT_DAE, MULT_VAE
from recospark.models.neural.recipes.deep import DNN, RESIDUAL_MF
from recospark.models.neural.recipes.mf import GMF, NEURAL_MF
from recospark.models.neural.recipes.ncf import NEUMF
from recospark.models.neural.recipes.rbm import RBM

__all__ = ["RECIPES", "recipe"]

RECIPES: dict[str, Recipe] = {r.name: r for r in (NEURAL_MF, DNN, RESIDUAL_MF, AUTOREC, RBM, GMF, NEUMF, MULT_VAE, MULT_DAE)}


def recipe(name: str) -> Recipe:
    """The recipe of model `name`; unknown names list the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown neural model {name!r}; known: {', '.join(RECIPES)}") from None
