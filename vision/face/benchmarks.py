"""Benchmarks of the face package; importing this module registers them.

* ``face-margin-head``: one training step of the ArcFace margin head and its softmax
  cross-entropy at ``C = 100,000`` identities, ``D = 512``, ``B = 256`` (forward,
  backward to the embeddings and the centres, SGD update of the centres in place):
  Partial FC (sample rate 0.1, :mod:`vision.face.partial_fc`) against the full
  classifier, timed in alternation in the same run, each with its GFLOP/s (the three
  ``B × C × D`` matmuls of forward and backward) and fraction of the matmul ceiling;
  then :func:`vision.face.align.norm_crop` jitted and vmapped over 256 faces against a
  Python loop of ``skimage.transform.SimilarityTransform`` + ``skimage.transform.warp``
  (``order=1``, ``cval=0``), after checking that both give the same crops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common.bench import BenchContext, benchmark, time_interleaved


def _margin_steps(num_classes: int, sample_rate: float, lr: float = 0.1):
    """Jitted full and Partial FC training steps of the ArcFace head, centres donated."""
    from vision.face.margins import MARGINS, softmax_cross_entropy
    from vision.face.partial_fc import sample_centers

    head = MARGINS.get("arcface")

    def loss(centers, embeddings, labels):
        return softmax_cross_entropy(head(embeddings, centers, labels), labels)

    def full(centers, embeddings, labels, key):
        del key
        value, (g_centers, g_emb) = jax.value_and_grad(loss, argnums=(0, 1))(
            centers, embeddings, labels)
        return centers - lr * g_centers, g_emb, value

    def partial(centers, embeddings, labels, key):
        sample = sample_centers(key, labels, num_classes, sample_rate)
        value, (g_sub, g_emb) = jax.value_and_grad(loss, argnums=(0, 1))(
            centers[sample.indices], embeddings, sample.labels)
        return centers.at[sample.indices].add(-lr * g_sub), g_emb, value

    return (jax.jit(full, donate_argnums=0), jax.jit(partial, donate_argnums=0))


@benchmark("face-margin-head", "ArcFace head + loss training step at C=100k, D=512, B=256: "
           "Partial FC (rate 0.1) vs the full classifier; norm_crop vmapped over 256 faces "
           "vs a scikit-image warp loop")
def bench_margin_head(ctx: BenchContext) -> dict:
    from vision.face.partial_fc import samples_per_shard

    num_classes, dim, batch, rate = 100_000, 512, 256, 0.1
    rounds = 5 if ctx.quick else 15
    keys = jax.random.split(jax.random.key(0), 4)
    embeddings = jax.random.normal(keys[0], (batch, dim))
    labels = jax.random.randint(keys[1], (batch,), 0, num_classes)
    full_step, partial_step = _margin_steps(num_classes, rate)
    state = {"full": 0.01 * jax.random.normal(keys[2], (num_classes, dim)),
             "partial": 0.01 * jax.random.normal(keys[2], (num_classes, dim))}
    counter = {"step": 0}

    def run(name, step):
        def call():
            counter["step"] += 1
            key = jax.random.fold_in(keys[3], counter["step"])
            state[name], g_emb, value = step(state[name], embeddings, labels, key)
            return g_emb, value
        return call

    times = time_interleaved({"full": run("full", full_step),
                              "partial": run("partial", partial_step)}, rounds)
    sampled = samples_per_shard(num_classes, rate)
    full_flops = 3 * 2 * batch * num_classes * dim
    partial_flops = 3 * 2 * batch * sampled * dim
    full_gflops = full_flops / times["full"].median / 1e9
    partial_gflops = partial_flops / times["partial"].median / 1e9
    results = {
        "classes": num_classes, "dim": dim, "batch": batch, "sample_rate": rate,
        "full_step_ms": 1e3 * times["full"].median,
        "partial_fc_step_ms": 1e3 * times["partial"].median,
        "full_over_partial_fc": times["full"].median / times["partial"].median,
        "full_gflops": full_gflops,
        "partial_fc_gflops": partial_gflops,
        "full_fraction_of_matmul_ceiling": ctx.fraction_of_ceiling(full_gflops),
        "partial_fc_fraction_of_matmul_ceiling": ctx.fraction_of_ceiling(partial_gflops),
    }
    state.clear()
    results.update(_bench_norm_crop(rounds))
    return results


def _bench_norm_crop(rounds: int, faces: int = 256, side: int = 128) -> dict:
    from skimage.transform import SimilarityTransform, warp

    from vision.face.align import ARCFACE_TEMPLATE, norm_crop

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(faces, side, side, 3)).astype(np.float32)
    angle = rng.uniform(-0.5, 0.5, faces)
    scale = rng.uniform(0.8, 1.2, faces)
    rot = scale[:, None, None] * np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1),
                                           np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    landmarks = (np.einsum("fij,kj->fki", rot, ARCFACE_TEMPLATE - 56.0) + side / 2
                 + rng.normal(scale=1.0, size=(faces, 5, 2))).astype(np.float32)
    crop = jax.jit(jax.vmap(norm_crop))
    images_dev, landmarks_dev = jnp.asarray(images), jnp.asarray(landmarks)

    def skimage_loop():
        out = np.empty((faces, 112, 112, 3), np.float32)
        for i in range(faces):
            tform = SimilarityTransform.from_estimate(landmarks[i].astype(np.float64),
                                                      ARCFACE_TEMPLATE.astype(np.float64))
            out[i] = warp(images[i], tform.inverse, output_shape=(112, 112), order=1,
                          mode="constant", cval=0.0, preserve_range=True)
        return out

    difference = float(np.max(np.abs(np.asarray(crop(images_dev, landmarks_dev))
                                     - skimage_loop())))
    if difference > 1e-3:
        raise AssertionError(f"norm_crop and skimage.transform.warp differ by {difference}")
    times = time_interleaved({"jax": lambda: crop(images_dev, landmarks_dev),
                              "skimage": skimage_loop}, rounds)
    return {
        "norm_crop_faces": faces,
        "norm_crop_input_side": side,
        "norm_crop_vmap_ms": 1e3 * times["jax"].median,
        "skimage_warp_loop_ms": 1e3 * times["skimage"].median,
        "skimage_loop_over_norm_crop": times["skimage"].median / times["jax"].median,
        "norm_crop_max_abs_difference": difference,
    }
