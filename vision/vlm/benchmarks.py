"""Benchmark ``vit-packing``: MoonViT over mixed-resolution images, packed vs padded-to-max.

A batch of images with sides drawn independently from ``28 … 224`` pixels (2–16 patches
of 14 a side: square, wide and tall) is encoded twice by the same jitted MoonViT:

* **packed**: first-fit-decreasing into rows as long as the largest image, attention
  confined to each image by segment ids (``vision.vlm.moonvit.pack_images``);
* **padded**: one image per row, every row padded to the largest image (the usual
  fixed-length batch).

Reported: real (image) tokens per second of each, their ratio (the issue's goal is
``>= 1.5×``), the real/computed token fraction of each layout, and the fraction of the
machine's matmul ceiling each reaches (the computed matmul and attention FLOPs of the
buffer over the median time). Times are interleaved (``common.bench.time_interleaved``).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from common.bench import BenchContext, benchmark, time_interleaved
from vision.vlm.moonvit import MoonViT, MoonViTConfig, PackedImages, first_fit, pack_images

__all__ = ["encoder_flops", "mixed_images", "vit_packing"]


def mixed_images(n: int, seed: int = 0, sides=tuple(range(28, 225, 28))) -> list[np.ndarray]:
    """``n`` random RGB images with height and width drawn independently from ``sides``."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(size=(int(rng.choice(sides)), int(rng.choice(sides)), 3)).astype(
        np.float32) for _ in range(n)]


def encoder_flops(cfg: MoonViTConfig, rows: int, length: int) -> float:
    """Matmul FLOPs of MoonViT over a ``[rows, length]`` buffer: patch embedding, q/k/v/o
    projections, ``QKᵀ`` and ``AV`` over the full ``length × length`` block, and the MLP."""
    D, T = cfg.d_model, rows * length
    per_layer = 2 * T * (4 * D * D + 2 * D * cfg.mlp_dim) + 4 * rows * length**2 * D
    return 2.0 * T * cfg.patch_dim * D + cfg.num_layers * per_layer


@benchmark("vit-packing", "MoonViT tokens/s on mixed-resolution images: packed vs padded-to-max")
def vit_packing(ctx: BenchContext) -> dict:
    if ctx.quick:
        cfg = MoonViTConfig(d_model=128, num_layers=2, num_heads=4, mlp_dim=512,
                            pos_grid=(16, 16))
        n = 32
    else:
        cfg = MoonViTConfig(d_model=384, num_layers=6, num_heads=6, mlp_dim=1536,
                            pos_grid=(32, 32))
        n = 64
    images = mixed_images(n)
    p = cfg.patch_size
    sizes = [(im.shape[0] // p) * (im.shape[1] // p) for im in images]
    L = max(sizes)
    rows = len(first_fit(sizes, L)[2])
    packed, pinfo = pack_images(images, p, L, rows)
    padded, dinfo = pack_images(images, p, L, n, one_per_row=True)
    model = MoonViT(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    @jax.jit
    def encode(state, batch: PackedImages):
        return nnx.merge(graphdef, state)(batch)

    timings = time_interleaved({"packed": lambda: encode(state, packed),
                                "padded": lambda: encode(state, padded)},
                               rounds=5 if ctx.quick else 7)
    real = float(sum(sizes))
    out = {"images": n, "real_tokens": int(real), "max_tokens": L,
           "packed_rows": rows, "padded_rows": n,
           "packed_efficiency": pinfo.efficiency, "padded_efficiency": dinfo.efficiency}
    for name, r in (("packed", rows), ("padded", n)):
        t = timings[name].median
        out[f"{name}_ms"] = 1e3 * t
        out[f"{name}_tokens_per_s"] = real / t
        out[f"{name}_fraction_of_ceiling"] = ctx.fraction_of_ceiling(
            encoder_flops(cfg, r, L) / t / 1e9)
    out["speedup_packed_vs_padded"] = out["packed_tokens_per_s"] / out["padded_tokens_per_s"]
    return out
