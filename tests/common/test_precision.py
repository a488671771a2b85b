"""Mixed precision (``common.precision``): bf16 computes in bfloat16 with float32
parameters, gradients, optimizer state and losses; a bf16 step stays within a stated
tolerance of the float32 step; training at bf16 reaches the float32 result."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import common.recipes  # noqa: F401  (registers digits-mlp)
from common.nn import MLP
from common.optim import build_optimizer
from common.precision import PRECISIONS, get_policy
from common.recipe import ConfigError, resolve_config
from common.train import TrainState, train_step_fn

# bfloat16 keeps 8 significant bits: a relative rounding of 2^-8 ≈ 0.4% per operation.
# One step's loss agrees to 2%, and parameters after one AdamW step (whose update is
# ≈ lr · sign(g) for most entries) to a few percent of the step size.
BF16_LOSS_RTOL = 2e-2


def _mlp_step(precision: str):
    policy = get_policy(precision)
    model = MLP([16, 64, 64, 4], activation="gelu", dtype=policy.layer_dtype,
                param_dtype=policy.param_dtype, rngs=nnx.Rngs(0))
    tx = build_optimizer(name="adamw", learning_rate=1e-2)
    state = TrainState.create(model, tx, jax.random.key(0))
    graphdef = state.graphdef

    def loss_fn(params, rest, batch, key):
        logits = nnx.merge(graphdef, params, rest)(batch["x"])
        loss = jnp.mean((policy.cast_output(logits) - batch["y"]) ** 2)
        return loss, {"logits_is_bf16": jnp.asarray(logits.dtype == jnp.bfloat16)}

    x = jax.random.normal(jax.random.key(1), (32, 16))
    batch = {"x": x, "y": jnp.tanh(x[:, :4])}
    return state, jax.jit(train_step_fn(loss_fn, tx)), batch


def test_policies_and_bad_names():
    assert PRECISIONS.names() == ["bf16", "fp32"]
    bf16 = get_policy("bf16")
    assert (bf16.param_dtype, bf16.compute_dtype, bf16.output_dtype) == (
        jnp.float32, jnp.bfloat16, jnp.float32)
    assert get_policy("fp32").layer_dtype is None and bf16.layer_dtype == jnp.bfloat16
    tree = {"a": jnp.ones(2, jnp.bfloat16), "i": jnp.ones(2, jnp.int32)}
    out = bf16.cast_output(tree)
    assert out["a"].dtype == jnp.float32 and out["i"].dtype == jnp.int32
    for bad in ("fp16", "bfloat16", None):
        with pytest.raises(ValueError, match="precision must be one of bf16, fp32"):
            get_policy(bad)
    with pytest.raises(ConfigError, match="precision"):
        resolve_config("digits-mlp", overrides={"precision": "fp8"})


def test_bf16_step_computes_in_bf16_keeps_float32_state_and_tracks_the_float32_step():
    s32, step32, batch = _mlp_step("fp32")
    s16, step16, _ = _mlp_step("bf16")
    new32, m32 = step32(s32, batch)
    new16, m16 = step16(s16, batch)
    assert bool(m16["logits_is_bf16"]) and not bool(m32["logits_is_bf16"])
    # parameters, optimizer moments and the loss stay float32
    for leaf in jax.tree.leaves((new16.params, new16.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    assert m16["loss"].dtype == jnp.float32
    np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=BF16_LOSS_RTOL)
    # the update of each parameter (new − old): AdamW's first step is ≈ −lr·sign(g), so
    # the two precisions agree wherever the gradient's sign does (all but a few entries)
    for old, a, b in zip(jax.tree.leaves(s32.params), jax.tree.leaves(new32.params),
                         jax.tree.leaves(new16.params), strict=True):
        d32, d16 = np.asarray(a - old), np.asarray(b - old)
        assert np.mean(np.abs(d32 - d16) < 2e-3) > 0.9


@pytest.mark.slow
def test_detr_bf16_forward_and_step_track_float32():
    from common.optim import build_optimizer as build
    from vision.detr import DETR, BackboneConfig, DETRConfig
    from vision.recipes.detr_shapes import make_loss_fn

    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = DETRConfig(num_classes=4, num_queries=6, d_model=32, num_heads=4,
                         num_encoder_layers=1, num_decoder_layers=1, mlp_dim=64,
                         dropout_rate=0.0, dtype=get_policy(precision).layer_dtype,
                         backbone=BackboneConfig(stem_channels=8, channels=(16, 32),
                                                 blocks=(1, 1), strides=(2, 2)))
        tx = build(name="adamw", learning_rate=1e-4)
        state = TrainState.create(DETR(cfg, rngs=nnx.Rngs(0)), tx, jax.random.key(0))
        from vision.detr.loss import CriterionConfig

        step = jax.jit(train_step_fn(make_loss_fn(state.graphdef, CriterionConfig()), tx,
                                     updates_rest=True))
        images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
        batch = {"images": images, "mask": jnp.ones((2, 32, 32), bool),
                 "labels": jnp.array([[1, 2, 0], [3, 0, 0]]),
                 "boxes": jnp.array([[[.3, .3, .2, .2], [.6, .6, .3, .2], [0, 0, 0, 0]],
                                     [[.5, .5, .4, .4], [0, 0, 0, 0], [0, 0, 0, 0]]]),
                 "box_mask": jnp.array([[True, True, False], [True, False, False]])}
        new, metrics = step(state, batch)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new.params))
        losses[precision] = float(metrics["loss"])
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=BF16_LOSS_RTOL)


@pytest.mark.slow
def test_digits_mlp_trains_to_the_float32_accuracy_at_bf16():
    """digits-mlp for 600 steps at each precision: test accuracies within 2 points (the
    seed-to-seed spread of this recipe is about 1 point)."""
    from common.recipes.digits_mlp import DigitsConfig, train_digits

    accuracy = {}
    for precision in ("fp32", "bf16"):
        cfg = dataclasses.replace(DigitsConfig(), steps=600, hidden=(128, 128),
                                  checkpoint_every=600, eval_every=600, precision=precision)
        state, predict, data = train_digits(cfg)
        from common.distributed import global_array, to_host
        from common.sharding import make_mesh

        x = global_array(data["x_test"], make_mesh())
        accuracy[precision] = float(np.mean(to_host(predict(state.params, state.rest, x))
                                            == data["y_test"]))
    assert accuracy["fp32"] > 0.95
    assert abs(accuracy["bf16"] - accuracy["fp32"]) < 0.02, accuracy


def _dot_dtypes(fn, *args) -> set[str]:
    """The operand dtypes of every matmul and convolution in ``fn``'s jaxpr, nested
    jaxprs (scan, remat, custom_vjp) included."""
    found: set[str] = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.update(str(v.aval.dtype) for v in eqn.invars)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("which", ["causal_lm", pytest.param("moe_lm", marks=pytest.mark.slow),
                                   pytest.param("score_unet", marks=pytest.mark.slow),
                                   pytest.param("detr", marks=pytest.mark.slow)])
def test_models_run_their_matmuls_in_bf16_and_return_float32_outputs(which):
    """The transformer and conv models of the recipes with a ``precision`` switch."""
    tokens = jnp.zeros((2, 8), jnp.int32)
    if which == "score_unet":
        from generative.models.unet import ScoreUNet

        make = lambda dtype: ScoreUNet(1, image_size=8, channels=8, channel_mult=(1, 2),
                                       groups=4, dtype=dtype, rngs=nnx.Rngs(0))
        run = lambda model, x: model(x, jnp.full((2,), 0.5))
        tokens = jnp.zeros((2, 8, 8, 1))
    elif which == "detr":
        from vision.detr import DETR, BackboneConfig, DETRConfig

        make = lambda dtype: DETR(DETRConfig(
            num_classes=4, num_queries=4, d_model=16, num_heads=2, num_encoder_layers=1,
            num_decoder_layers=1, mlp_dim=32, dtype=dtype,
            backbone=BackboneConfig(stem_channels=8, channels=(8, 16), blocks=(1, 1),
                                    strides=(2, 2))), rngs=nnx.Rngs(0))
        run = lambda model, x: model(x)["logits"]
        tokens = jnp.zeros((2, 32, 32, 3))
    elif which == "causal_lm":
        from rl.preference.model import CausalLM, LMConfig

        make = lambda dtype: CausalLM(LMConfig(vocab_size=16, d_model=32, num_layers=1,
                                               num_heads=2, mlp_dim=64, dtype=dtype),
                                      rngs=nnx.Rngs(0))
        run = lambda model, tokens: model(tokens)
    else:
        from vision.vlm.language_model import CONFIGS, MoELM

        make = lambda dtype: MoELM(CONFIGS["tiny-moe"].replace(dtype=dtype), rngs=nnx.Rngs(0))
        run = lambda model, tokens: model(tokens)[0]
    for precision in ("fp32", "bf16"):
        model = make(get_policy(precision).layer_dtype)
        graphdef, state = nnx.split(model)
        fn = lambda state, tokens: run(nnx.merge(graphdef, state), tokens)
        dtypes = _dot_dtypes(fn, state, tokens)
        assert jax.eval_shape(fn, state, tokens).dtype == jnp.float32
        if precision == "fp32":
            assert dtypes == {"float32"}
        else:  # convolutions, attention, MLP and expert matmuls in bf16; the router, the
            # time embedding and the LM head's float32 residual input stay float32
            assert "bfloat16" in dtypes


def test_every_recipe_with_a_precision_switch_validates_it_before_running():
    """The transformer and conv recipes take ``--set precision``; a bad value is a
    ``ConfigError`` naming it (nothing is written), ``bf16`` resolves."""
    import generative.recipes  # noqa: F401
    import rl.recipes  # noqa: F401
    import vision.recipes  # noqa: F401
    from common.recipe import RECIPES

    with_switch = sorted(n for n, r in RECIPES.items()
                         if hasattr(r.configs["quick"], "precision"))
    assert with_switch == ["detr-shapes", "digits-mlp", "dpo-frontier", "face-openset",
                           "moe-lm", "pose-rle", "sde-digits", "vlm-shapes"]
    for name in with_switch:
        with pytest.raises(ConfigError, match="precision must be one of"):
            resolve_config(name, overrides={"precision": "fp16"})
        assert resolve_config(name, overrides={"precision": "bf16"})[1].precision == "bf16"
