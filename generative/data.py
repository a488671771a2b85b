"""Data for the generative recipes: 2-D toys, Gaussian mixtures with exact scores,
scikit-learn's 8×8 digits and Fashion-MNIST as integer images.

* ``TOY_DATASETS`` (registry): ``swiss_roll``, ``eight_gaussians``, ``checkerboard``,
  ``ncsn_mixture`` — each ``sample(key, n) -> [n, 2]``, pure and jittable.
* :class:`GaussianMixture` — isotropic mixture with ``log_prob`` and ``score`` of the
  data pushed through ``x ↦ m x + s z`` (the perturbation of every SDE here), so
  samplers and likelihoods can be checked with the exact score
  (:func:`mixture_score_fn`).
* :func:`load_digits_images` — scikit-learn's digits as ``[N, 8, 8, 1]`` levels 0..16.
* :func:`load_fashion_mnist` — Fashion-MNIST ``[N, 28, 28, 1]`` uint8 from the IDX
  files of the Debian package ``dataset-fashion-mnist`` (or any folder holding them).

Images enter models as ``2 u − 1`` of dequantised ``u ∈ [0, 1)``
(:func:`to_model_space`), the ``[−1, 1]`` convention of score_sde.

Papers: Grathwohl et al. 2019 (FFJORD, the 2-D toy densities); Song & Ermon 2019,
section 3.2 (the two-Gaussian mixture); Xiao, Rasul & Vollgraf 2017 (Fashion-MNIST).
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import shape_str
from common.registry import Registry

__all__ = [
    "FASHION_MNIST_DIR",
    "TOY_DATASETS",
    "GaussianMixture",
    "checkerboard_log_prob",
    "eight_gaussians",
    "from_model_space",
    "load_digits_images",
    "load_fashion_mnist",
    "mixture_score_fn",
    "ncsn_mixture",
    "read_idx",
    "sample_toy",
    "to_model_space",
]

TOY_DATASETS: Registry[Callable[[jax.Array, int], jax.Array]] = Registry("toy dataset")

#: Where the Debian package ``dataset-fashion-mnist`` installs its IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


# ----------------------------------------------------------------------------- mixtures


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """``p(x) = Σ_k w_k N(x; μ_k, τ² I)`` with closed-form perturbed densities.

    Under ``y = m x + s z`` (``z ~ N(0, I)``) the mixture stays a mixture:
    ``p(y) = Σ_k w_k N(y; m μ_k, (m² τ² + s²) I)``, whose score is
    ``Σ_k r_k(y) (m μ_k − y) / (m² τ² + s²)`` with responsibilities ``r_k``.

    Attributes:
      weights: ``K`` positive weights (normalised on use).
      means: ``K`` points of dimension ``D``.
      std: component standard deviation ``τ > 0``.

    Example:
        >>> mix = GaussianMixture((0.2, 0.8), ((-5.0, -5.0), (5.0, 5.0)), 1.0)
        >>> mix.sample(jax.random.key(0), 1000).shape
        (1000, 2)
    """

    weights: tuple[float, ...]
    means: tuple[tuple[float, ...], ...]
    std: float = 1.0

    def __post_init__(self):
        w = np.asarray(self.weights, np.float64)
        mu = np.asarray(self.means, np.float64)
        if w.ndim != 1 or mu.ndim != 2 or mu.shape[0] != w.shape[0] or w.size == 0:
            raise ValueError(f"weights must be [K] and means [K, D] with the same K, got "
                             f"{shape_str(w.shape)} and {shape_str(mu.shape)}")
        if not (np.all(w > 0) and self.std > 0):
            raise ValueError(f"weights and std must be > 0, got {self.weights}, {self.std}")

    @property
    def dim(self) -> int:
        return len(self.means[0])

    def _params(self, dtype):
        w = jnp.asarray(self.weights, dtype)
        return w / jnp.sum(w), jnp.asarray(self.means, dtype)

    def sample(self, key: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
        """``[n, D]`` samples; component from ``split(key)[0]``, noise from ``[1]``."""
        k_key, z_key = jax.random.split(key)
        w, mu = self._params(dtype)
        k = jax.random.choice(k_key, w.shape[0], (n,), p=w)
        return mu[k] + self.std * jax.random.normal(z_key, (n, self.dim), dtype)

    def _components(self, y, mean_coeff, noise_std):
        dtype = y.dtype
        w, mu = self._params(dtype)
        B = y.shape[0]
        m = jnp.broadcast_to(jnp.asarray(mean_coeff, dtype), (B,))
        s = jnp.broadcast_to(jnp.asarray(noise_std, dtype), (B,))
        var = m**2 * self.std**2 + s**2  # [B]
        centres = m[:, None, None] * mu[None]  # [B, K, D]
        diff = centres - y[:, None, :]  # [B, K, D]
        logits = (jnp.log(w)[None] - 0.5 * jnp.sum(diff**2, -1) / var[:, None]
                  - 0.5 * self.dim * jnp.log(2 * math.pi * var)[:, None])  # [B, K]
        return logits, diff, var

    def log_prob(self, y: jax.Array, mean_coeff=1.0, noise_std=0.0) -> jax.Array:
        """``log p(y)`` of ``y = m x + s z``; ``m``, ``s`` scalars or ``[B]``. ``[B, D] -> [B]``."""
        self._check(y)
        logits, _, _ = self._components(y, mean_coeff, noise_std)
        return jax.nn.logsumexp(logits, axis=-1)

    def score(self, y: jax.Array, mean_coeff=1.0, noise_std=0.0) -> jax.Array:
        """``∇_y log p(y)`` of ``y = m x + s z``; ``[B, D] -> [B, D]``."""
        self._check(y)
        logits, diff, var = self._components(y, mean_coeff, noise_std)
        resp = jax.nn.softmax(logits, axis=-1)  # [B, K]
        return jnp.einsum("bk,bkd->bd", resp, diff) / var[:, None]

    def _check(self, y):
        if jnp.ndim(y) != 2 or y.shape[-1] != self.dim:
            raise ValueError(f"y must have shape [B, {self.dim}], got {shape_str(jnp.shape(y))}")


def mixture_score_fn(mixture: GaussianMixture, sde) -> Callable:
    """Exact ``score_fn(x [B, D], t [B])`` of the mixture perturbed by ``sde`` at ``t``.

    Example:
        >>> x, nfe = pc_sampler(key, mixture_score_fn(mix, VPSDE()), VPSDE(), (512, 2))
    """

    def score_fn(x, t):
        m, s = sde.marginal_prob(jnp.ones((x.shape[0], 1), x.dtype), t)
        return mixture.score(x, m[:, 0], s)

    return score_fn


def ncsn_mixture() -> GaussianMixture:
    """Song & Ermon 2019's mixture ``⅕ N((−5, −5), I) + ⅘ N((5, 5), I)``."""
    return GaussianMixture((0.2, 0.8), ((-5.0, -5.0), (5.0, 5.0)), 1.0)


def eight_gaussians() -> GaussianMixture:
    """Eight equal Gaussians on a circle of radius 2√2, std 0.5/√2 (FFJORD's toy)."""
    angles = np.arange(8) * np.pi / 4
    radius = 4.0 / math.sqrt(2.0)
    means = tuple((float(radius * np.cos(a)), float(radius * np.sin(a))) for a in angles)
    return GaussianMixture((1.0,) * 8, means, 0.5 / math.sqrt(2.0))


# ----------------------------------------------------------------------------- 2-D toys


@TOY_DATASETS.register("swiss_roll")
def swiss_roll(key: jax.Array, n: int) -> jax.Array:
    """``θ = 1.5π (1 + 2u)``, ``x = (θ cos θ, θ sin θ) / 5 + 0.2 z`` (``[n, 2]``)."""
    u_key, z_key = jax.random.split(key)
    theta = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(u_key, (n,)))
    x = jnp.stack([theta * jnp.cos(theta), theta * jnp.sin(theta)], axis=-1) / 5.0
    return x + 0.2 * jax.random.normal(z_key, (n, 2))


@TOY_DATASETS.register("eight_gaussians")
def _eight_gaussians(key: jax.Array, n: int) -> jax.Array:
    """Samples of :func:`eight_gaussians` (``[n, 2]``)."""
    return eight_gaussians().sample(key, n)


@TOY_DATASETS.register("checkerboard")
def checkerboard(key: jax.Array, n: int) -> jax.Array:
    """Uniform on the 8 dark cells of a 4×4 board over ``[−4, 4]²`` (``[n, 2]``).

    Density ``1/32`` on the dark cells (cells ``(i, j)`` with ``i + j`` even), so the
    true negative log-likelihood is ``log 32 ≈ 3.466`` nats.
    """
    c_key, u_key = jax.random.split(key)
    cell = jax.random.randint(c_key, (n,), 0, 8)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)  # (row + col) even
    corner = jnp.stack([col, row], axis=-1).astype(jnp.float32) * 2.0 - 4.0
    return corner + 2.0 * jax.random.uniform(u_key, (n, 2))


def checkerboard_log_prob(x: jax.Array) -> jax.Array:
    """Exact ``log p`` of :func:`checkerboard`: ``−log 32`` on dark cells, ``−∞`` elsewhere."""
    cells = jnp.floor((x + 4.0) / 2.0)
    inside = jnp.all((x >= -4.0) & (x < 4.0), axis=-1)
    dark = (jnp.sum(cells, axis=-1) % 2) == 0
    return jnp.where(inside & dark, -math.log(32.0), -jnp.inf)


@TOY_DATASETS.register("ncsn_mixture")
def _ncsn_mixture(key: jax.Array, n: int) -> jax.Array:
    """Samples of :func:`ncsn_mixture` (``[n, 2]``)."""
    return ncsn_mixture().sample(key, n)


def sample_toy(name: str, key: jax.Array, n: int) -> jax.Array:
    """``[n, 2]`` samples of the registered toy ``name``."""
    return TOY_DATASETS.get(name)(key, n)


# ----------------------------------------------------------------------------- images


def to_model_space(u: jax.Array) -> jax.Array:
    """``[0, 1] → [−1, 1]``: ``2u − 1`` (log-Jacobian ``D log 2``)."""
    return 2.0 * u - 1.0


def from_model_space(y: jax.Array) -> jax.Array:
    """``[−1, 1] → [0, 1]``, clipped."""
    return jnp.clip((y + 1.0) / 2.0, 0.0, 1.0)


def load_digits_images(test_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's 8×8 digits as integer images, stratified train/test split.

    Returns:
      ``x_train [N, 8, 8, 1] int32`` with levels ``0..16`` (``n_bins = 17``),
      ``y_train [N] int32`` and the same for the test split, plus ``n_bins``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.int32)[..., None]  # [N, 8, 8, 1]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int32), test_size=test_fraction, random_state=seed,
        stratify=digits.target)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "n_bins": 17}


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST format; ``.gz`` allowed) into a numpy array.

    Format: two zero bytes, a type byte, a rank byte, ``rank`` big-endian uint32
    sizes, then the data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    dtype, rank = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    offset = 4 + 4 * rank
    count = math.prod(dims)
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: header promises {dims} values of {dtype}, file holds "
                         f"{len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype, count, offset).reshape(dims).astype(dtype.newbyteorder("="))


_FASHION_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
                  "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def load_fashion_mnist(root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Fashion-MNIST from its four IDX files (plain or ``.gz``).

    Args:
      root: folder with the files; default ``$JAXATLAS_FASHION_MNIST`` or the Debian
        package's ``FASHION_MNIST_DIR``.

    Returns:
      ``x_train [60000, 28, 28, 1] uint8``, ``y_train [60000] int32``, ``x_test``,
      ``y_test`` and ``n_bins = 256``.

    Raises:
      FileNotFoundError: with install instructions when a file is missing.
    """
    root = Path(root or os.environ.get("JAXATLAS_FASHION_MNIST") or FASHION_MNIST_DIR)
    out: dict[str, np.ndarray] = {}
    for key, stem in _FASHION_FILES.items():
        candidates = [root / (stem + ".gz"), root / stem]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install the Debian "
                f"package with `apt-get install dataset-fashion-mnist` (files go to "
                f"{FASHION_MNIST_DIR}), or point JAXATLAS_FASHION_MNIST / root= at a folder "
                f"holding the four IDX files; `dpkg -L dataset-fashion-mnist` lists them.")
        out[key] = read_idx(found)
    out["x_train"] = out["x_train"][..., None]
    out["x_test"] = out["x_test"][..., None]
    out["y_train"] = out["y_train"].astype(np.int32)
    out["y_test"] = out["y_test"].astype(np.int32)
    out["n_bins"] = 256
    return out
