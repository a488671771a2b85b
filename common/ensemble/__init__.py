"""Ensemble learning in JAX: trees, bagging and random forests, boosting, stacking and
deep ensembles, as pure jittable functions with scikit-learn's semantics.

* ``trees`` — CART trees as fixed-shape arrays (fit and predict jit and vmap);
* ``combinators`` — ``bag``, ``boost``, ``stack`` over any pure ``(fit, predict)`` pair;
* ``estimators`` — ``make(name, **params)`` and the ``ESTIMATORS`` registry;
* ``deep`` — deep ensembles trained in one vmapped jit, and calibration measures.

Example:
    >>> from common.ensemble import make
    >>> est = make("gradient_boosting", n_estimators=50)
    >>> params = est.fit(jax.random.key(0), X, y)
    >>> labels = est.predict(params, X_test)
"""

from common.ensemble.combinators import bag, boost, stack
from common.ensemble.estimators import ESTIMATORS, Estimator, make

__all__ = ["ESTIMATORS", "Estimator", "bag", "boost", "make", "stack"]
