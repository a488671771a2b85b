"""Independent numpy references and helpers shared by the common.nn tests.

Each reference recomputes a block from its definition with the module's own weights
(float64 numpy, explicit loops where that makes the maths plain).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# ----------------------------------------------------------------------------- references


def ref_attention(q, k, v, mask=None, bias=None, scale=None):
    """Loop-by-loop softmax attention in float64; fully masked rows give zeros."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    mask = np.ones((1, 1, 1, 1), bool) if mask is None else np.asarray(mask)
    bias = np.zeros((1, 1, 1, 1)) if bias is None else np.asarray(bias, np.float64)
    out = np.zeros((B, T, H, D))
    for b in range(B):
        for h in range(H):
            kh = h // G
            m = np.broadcast_to(mask[min(b, mask.shape[0] - 1), min(h, mask.shape[1] - 1)],
                                (T, S))
            bb = np.broadcast_to(bias[min(b, bias.shape[0] - 1), min(h, bias.shape[1] - 1)],
                                 (T, S))
            for t in range(T):
                if not m[t].any():
                    continue
                logits = np.array([q[b, t, h] @ k[b, s, kh] * scale + bb[t, s] for s in range(S)])
                logits = np.where(m[t], logits, -np.inf)
                w = np.exp(logits - logits.max())
                w = w / w.sum()
                out[b, t, h] = w @ v[b, :, kh]
    return out


def ref_rope(x, positions, base=10000.0):
    """Complex-number rotary reference: z_i = x_i + j x_{i+D/2}, z_i · exp(j m θ_i)."""
    x = np.asarray(x, np.float64)
    D = x.shape[-1]
    positions = np.broadcast_to(np.asarray(positions, np.float64), x.shape[:2])
    theta = base ** (-np.arange(0, D, 2) / D)
    z = x[..., : D // 2] + 1j * x[..., D // 2 :]
    z = z * np.exp(1j * positions[:, :, None, None] * theta)
    return np.concatenate([z.real, z.imag], axis=-1)


def linear_params(layer):
    kernel = np.asarray(layer.kernel[...], np.float64)
    bias = None if layer.bias is None else np.asarray(layer.bias[...], np.float64)
    return kernel, bias


def ref_linear(x, layer):
    kernel, bias = linear_params(layer)
    y = np.asarray(x, np.float64) @ kernel
    return y if bias is None else y + bias


def ref_mha(mha, x_q, x_kv=None, x_v=None, mask=None, q_positions=None, kv_positions=None):
    """Numpy multi-head attention with the module's own weights."""
    x_kv = x_q if x_kv is None else x_kv
    x_v = x_kv if x_v is None else x_v
    B, T, _ = np.shape(x_q)
    S = np.shape(x_kv)[1]
    H, K, D = mha.num_heads, mha.num_kv_heads, mha.head_dim
    q = ref_linear(x_q, mha.q_proj).reshape(B, T, H, D)
    k = ref_linear(x_kv, mha.k_proj).reshape(B, S, K, D)
    v = ref_linear(x_v, mha.v_proj).reshape(B, S, K, D)
    kv_positions = q_positions if kv_positions is None else kv_positions
    if mha.rope == "1d":
        q = ref_rope(q, np.arange(T) if q_positions is None else q_positions, mha.rope_base)
        k = ref_rope(k, np.arange(S) if kv_positions is None else kv_positions, mha.rope_base)
    elif mha.rope == "2d":  # first half of each head rotates with the row, second with the column
        def rope_2d(x, rc):
            rc = np.asarray(rc)
            return np.concatenate([ref_rope(x[..., : D // 2], rc[..., 0], mha.rope_base),
                                   ref_rope(x[..., D // 2 :], rc[..., 1], mha.rope_base)], -1)

        q, k = rope_2d(q, q_positions), rope_2d(k, kv_positions)
    out = ref_attention(q, k, v, mask=mask)
    return ref_linear(out.reshape(B, T, H * D), mha.out_proj)


def normal(seed, shape, dtype=jnp.float32):
    """Test data from numpy: jax.random would compile a sampler for every shape."""
    sample = np.random.default_rng(seed).standard_normal(shape)
    return jax.device_put(sample.astype(jnp.dtype(dtype)))  # converted by numpy, not XLA


def bernoulli(seed, p, shape):
    return jnp.asarray(np.random.default_rng(seed).random(shape) < p)


def rngs(seed=0, **streams):
    """``nnx.Rngs`` on "rbg" keys, whose samplers compile much faster on CPU than
    threefry's; the tests only need deterministic, generic weights."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"),
                    **{k: jax.random.key(v, impl="rbg") for k, v in streams.items()})


def randomize(module, seed, scale=0.3):
    """Overwrite every parameter (biases and norm scales included) with N(0, scale²),
    so that a reference that ignored a bias or a norm offset would fail."""
    state = nnx.state(module, nnx.Param)
    rng = np.random.default_rng(seed)
    nnx.update(module, jax.tree.map(
        lambda p: jax.device_put((rng.standard_normal(p.shape) * scale).astype(p.dtype)), state))
    return module


def make(cls, *args, seed=0, **kwargs):
    """Build a module with zero kernels, then draw every parameter with ``randomize``.

    Skips compiling a truncated-normal sampler per kernel shape (the default init),
    which otherwise dominates these small tests; a few tests keep the default init.
    """
    zeros = lambda key, shape, dtype=jnp.float32: jax.device_put(np.zeros(shape, dtype))
    module = cls(*args, kernel_init=zeros, rngs=rngs(seed), **kwargs)
    return randomize(module, seed)


@functools.cache
def _jitted_call(static_items):
    static = dict(static_items)
    return nnx.jit(lambda m, a, kw: m(*a, **kw, **static))


def jit_call(module, *args, **kwargs):
    """Call an nnx module under ``nnx.jit``; array keywords are traced, others static.

    One compilation per configuration is much cheaper than compiling every primitive
    eagerly; the jitted caller is shared, so repeated shapes reuse the compilation.
    """
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, jax.Array)}
    static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in arrays))
    return _jitted_call(static)(module, args, arrays)


def random_qkv(seed, B=2, T=5, S=7, H=4, K=2, D=8, dtype=jnp.float32):
    q = normal(seed, (B, T, H, D), dtype)
    k = normal(seed + 1000, (B, S, K, D), dtype)
    v = normal(seed + 2000, (B, S, K, D), dtype)
    return q, k, v




NP_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "identity": lambda x: x,
}


def ref_mlp(mlp, x, act, activate_final=False):
    h = np.asarray(x, np.float64)
    for i, layer in enumerate(mlp.layers):
        h = ref_linear(h, layer)
        if i < len(mlp.layers) - 1 or activate_final:
            h = act(h)
    return h


def ref_gated(ffn, x, act):
    x = np.asarray(x, np.float64)
    return ref_linear(act(ref_linear(x, ffn.gate_proj)) * ref_linear(x, ffn.up_proj),
                      ffn.down_proj)
