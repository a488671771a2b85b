"""From DETR's set predictions to scored detections in pixel coordinates.

Paper: Carion et al. 2020 (the reference ``PostProcess``: softmax over classes, the
best real class and its probability per query, boxes scaled to the image size).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vision.boxes import box_cxcywh_to_xyxy

__all__ = ["postprocess"]


def postprocess(logits: jax.Array, boxes: jax.Array, image_sizes: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Scores, labels and pixel ``xyxy`` boxes of every query.

    ``p = softmax(logits)``, ``score_q = max_{c < C} p_q(c)``, ``label_q = argmax_{c<C}``
    (the no-object class is dropped, as in DETR's evaluation), and
    ``box_q = xyxy(b_q) · (w, h, w, h)``.

    Args:
      logits: ``[B, Q, C+1]`` class logits of the last decoder layer.
      boxes: ``[B, Q, 4]`` normalised ``cxcywh`` boxes.
      image_sizes: ``[B, 2]`` real ``(height, width)`` of each image in pixels.

    Returns:
      ``(scores [B, Q], labels [B, Q] int32, boxes [B, Q, 4] xyxy pixels)``.

    Example:
      >>> s, l, b = postprocess(jnp.zeros((1, 2, 3)), jnp.full((1, 2, 4), 0.5),
      ...                       jnp.array([[64, 32]]))
      >>> b[0, 0].tolist()
      [8.0, 16.0, 24.0, 48.0]
    """
    if jnp.ndim(logits) != 3:
        raise ValueError(f"logits must have shape [B, Q, C+1], got {jnp.shape(logits)}")
    B, Q, _ = logits.shape
    if jnp.shape(boxes) != (B, Q, 4):
        raise ValueError(f"boxes must have shape [B, Q, 4] = ({B}, {Q}, 4), got "
                         f"{jnp.shape(boxes)}")
    if jnp.shape(image_sizes) != (B, 2):
        raise ValueError(f"image_sizes must have shape [B, 2] = ({B}, 2) (height, width), "
                         f"got {jnp.shape(image_sizes)}")
    prob = jax.nn.softmax(logits, axis=-1)[..., :-1]
    scores = jnp.max(prob, axis=-1)
    labels = jnp.argmax(prob, axis=-1).astype(jnp.int32)
    h = image_sizes[:, 0].astype(boxes.dtype)
    w = image_sizes[:, 1].astype(boxes.dtype)
    scale = jnp.stack([w, h, w, h], axis=-1)[:, None, :]  # [B, 1, 4]
    return scores, labels, box_cxcywh_to_xyxy(boxes) * scale
