"""Dataset loaders that work offline, returning device-ready numpy arrays.

Every loader returns a dict of numpy arrays (``x_train``, ``y_train``, ``x_test``,
``y_test``) with a deterministic split for a given seed; a recipe moves them to the
device once and samples batches inside its jitted, scanned steps (:func:`sample_batch`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_int


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8×8 digits (1,797 images, 10 classes), stratified split.

    Features are standardised with the training split's per-pixel mean and standard
    deviation (pixels constant in training get unit scale).

    Returns:
      ``x_train [N_train, 64] float32``, ``y_train [N_train] int32``, and the same
      for the test split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data.astype(np.float32), digits.target.astype(np.int32),
        test_size=test_fraction, random_state=seed, stratify=digits.target)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return {"x_train": (x_train - mean) / std, "y_train": y_train,
            "x_test": (x_test - mean) / std, "y_test": y_test}


def sample_batch(arrays: dict[str, jax.Array], key: jax.Array, batch_size: int) -> dict:
    """A batch drawn uniformly with replacement from equally long arrays (jittable).

    Args:
      arrays: ``{name: [N, ...]}`` with the same leading size ``N``.
      key: PRNG key of this step.
      batch_size: ``B``.

    Returns:
      ``{name: [B, ...]}``.
    """
    check_int(batch_size, "batch_size", 1)
    if not arrays:
        raise ValueError("arrays must hold at least one array")
    sizes = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"arrays must share their leading size, got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("arrays are empty (leading size 0): there is nothing to sample")
    idx = jax.random.randint(key, (batch_size,), 0, n)
    return {name: jnp.take(a, idx, axis=0) for name, a in arrays.items()}


def sample_sharded_batch(arrays: dict[str, jax.Array], key: jax.Array, batch_size: int,
                         num_shards: int) -> dict:
    """A data-parallel batch: each of ``num_shards`` equal blocks of the rows gives
    ``batch_size / num_shards`` rows drawn uniformly with replacement from itself (jittable).

    With the arrays split along the mesh's ``data`` axis (``num_shards`` = its size),
    every device draws from the rows it holds, so no data crosses devices or hosts; the
    batch comes out split the same way. ``num_shards = 1`` is :func:`sample_batch`
    (the same draws).

    Args:
      arrays: ``{name: [N, ...]}`` with the same leading size, ``N`` a multiple of
        ``num_shards``.
      key: PRNG key of this step.
      batch_size: ``B``, a multiple of ``num_shards``.
      num_shards: ``S``, the number of blocks (devices on the ``data`` axis).

    Returns:
      ``{name: [B, ...]}``; rows ``s·B/S .. (s+1)·B/S − 1`` come from block ``s``.
    """
    check_int(num_shards, "num_shards", 1)
    check_int(batch_size, "batch_size", 1)
    if batch_size % num_shards:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of num_shards "
                         f"({num_shards}), the data axis size")
    if num_shards == 1:
        return sample_batch(arrays, key, batch_size)
    if not arrays:
        raise ValueError("arrays must hold at least one array")
    sizes = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"arrays must share their leading size, got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0 or n % num_shards:
        raise ValueError(f"arrays' leading size ({n}) must be a positive multiple of "
                         f"num_shards ({num_shards})")
    per_shard, rows = batch_size // num_shards, n // num_shards
    idx = jax.random.randint(key, (num_shards, per_shard), 0, rows)

    def draw(a):
        blocks = a.reshape(num_shards, rows, *a.shape[1:])
        picked = jax.vmap(lambda block, i: jnp.take(block, i, axis=0))(blocks, idx)
        return picked.reshape(batch_size, *a.shape[1:])

    return {name: draw(a) for name, a in arrays.items()}
