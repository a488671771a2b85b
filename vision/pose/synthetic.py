"""Synthetic people with COCO's 17 keypoints: articulated figures over cluttered scenes.

No keypoint data set is reachable offline, so :func:`render_people` draws one figure per
image from a kinematic tree (pelvis → torso → neck → head; shoulders → elbows → wrists;
hips → knees → ankles) with random limb lengths, joint angles, body yaw, scale, position
and in-plane rotation. Limbs are thick quadrilaterals with round joints, the torso a
polygon and the head a disk (``skimage.draw``), over a background of random shapes
(``skimage.draw.random_shapes``).

Visibility flags follow COCO:

* ``v = 2``: labelled and visible;
* ``v = 1``: labelled but occluded: a body keypoint covered by a part drawn later
  (limbs of the side nearer the camera are drawn last, the far side first: self-occlusion),
  or a face keypoint on the far side of the head (its yaw-rotated position on the head
  sphere faces away from the camera);
* ``v = 0``: unlabelled: the keypoint lies outside the image (truncation).

Annotations are COCO's: ``bbox`` ``[x, y, w, h]`` is the tight box of the figure's
pixels inside the image, ``area`` their count (COCO's segmentation area, the OKS scale
``s²``). Keypoint ``(x, y)`` are pixel coordinates with pixel centres at integers.

Top-down crops (:func:`top_down_crops`): a square of side ``padding · max(w, h)``
centred on the box, resampled to ``S × S`` by ``jax.image.scale_and_translate``
(bilinear, antialiased). Crop pixel ``(x_c, y_c)`` maps to image pixel
``x = x₀ + (x_c + 0.5) · r`` with the transform ``(x₀, y₀, r)``
(:func:`crop_to_image`, :func:`image_to_crop`).

Paper: Lin et al. 2014 (COCO keypoints, visibility flags, areas); Xiao et al. 2018
(top-down crops with 1.25× padding).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_int, shape_of, shape_str

__all__ = ["PeopleData", "crop_to_image", "image_to_crop", "render_people", "top_down_crops"]

# keypoint indices
_NOSE, _LEYE, _REYE, _LEAR, _REAR = 0, 1, 2, 3, 4
_LSH, _RSH, _LEL, _REL, _LWR, _RWR = 5, 6, 7, 8, 9, 10
_LHIP, _RHIP, _LKN, _RKN, _LAN, _RAN = 11, 12, 13, 14, 15, 16


@dataclasses.dataclass(frozen=True)
class PeopleData:
    """One person per image (numpy arrays, ``N`` images).

    Attributes:
      images: ``[N, H, W, 3]`` uint8.
      keypoints: ``[N, 17, 3]`` float32 ``(x, y, v)`` in image pixels (``(x, y)`` kept
        for ``v = 0`` too: the true, off-image position).
      boxes: ``[N, 4]`` float32 ``[x, y, w, h]``.
      areas: ``[N]`` float32 figure pixel counts.
    """

    images: np.ndarray
    keypoints: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _rot(v, angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _pose(rng: np.random.Generator, height: float):
    """Keypoints ``[17, 2]`` of one figure (pelvis at the origin, y down), the head
    centre and radius, the face-point depths and the near side (``"l"`` or ``"r"``)."""
    h = height
    yaw = rng.uniform(-math.radians(85), math.radians(85))
    lean = rng.normal(0.0, math.radians(8))
    torso = h * rng.uniform(0.27, 0.33)
    sh_half = h * rng.uniform(0.10, 0.13)
    hip_half = h * rng.uniform(0.07, 0.09)
    up_arm, fore = h * rng.uniform(0.14, 0.18), h * rng.uniform(0.12, 0.16)
    thigh, shin = h * rng.uniform(0.20, 0.24), h * rng.uniform(0.19, 0.23)
    head_r = h * rng.uniform(0.055, 0.07)
    up = _rot(np.array([0.0, -1.0]), lean)             # torso direction (towards the neck)
    side = _rot(np.array([1.0, 0.0]), lean)            # the person's left (image right, frontal)
    neck = up * torso
    width = math.cos(yaw)                              # left side at azimuth 90° + yaw
    kp = np.zeros((17, 2))
    kp[_LSH], kp[_RSH] = neck + side * sh_half * width, neck - side * sh_half * width
    kp[_LHIP], kp[_RHIP] = side * hip_half * width, -side * hip_half * width
    down = -up
    for sh, el, wr, sign in ((_LSH, _LEL, _LWR, 1.0), (_RSH, _REL, _RWR, -1.0)):
        a = rng.uniform(-math.radians(40), math.radians(160)) * sign
        kp[el] = kp[sh] + _rot(down, a) * up_arm
        b = a + rng.uniform(0.0, math.radians(140)) * rng.choice([-1.0, 1.0])
        kp[wr] = kp[el] + _rot(down, b) * fore
    for hp, kn, an, sign in ((_LHIP, _LKN, _LAN, 1.0), (_RHIP, _RKN, _RAN, -1.0)):
        a = rng.uniform(-math.radians(25), math.radians(60)) * sign
        kp[kn] = kp[hp] + _rot(down, a) * thigh
        b = a - rng.uniform(0.0, math.radians(110)) * sign * rng.choice([-1.0, 1.0], p=[.2, .8])
        kp[an] = kp[kn] + _rot(down, b) * shin
    head = neck + up * (head_r * 1.5)
    # face points on the head sphere: (azimuth, elevation) before yaw; left = +azimuth
    face = {_NOSE: (0.0, -0.1), _LEYE: (0.45, 0.25), _REYE: (-0.45, 0.25),
            _LEAR: (1.65, 0.05), _REAR: (-1.65, 0.05)}
    depth = {}
    for k, (az, el) in face.items():
        phi = az + yaw
        kp[k] = head + side * head_r * math.sin(phi) * math.cos(el) + up * head_r * math.sin(el)
        depth[k] = math.cos(phi) * math.cos(el)
    near = "l" if yaw < 0 else "r"
    return kp, head, head_r, depth, near


def _limb_polygon(p, q, half_width):
    d = q - p
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-6) * half_width
    return np.array([p + n, q + n, q - n, p - n])


def _draw_figure(shape, kp, head, head_r, near, thick, rng):
    """Parts in drawing order: ``(part id map [H, W], owners {keypoint: part ids},
    colours per part)``; ``kp`` in image pixels."""
    from skimage.draw import disk, polygon

    far = "r" if near == "l" else "l"
    sides = {"l": (_LSH, _LEL, _LWR, _LHIP, _LKN, _LAN), "r": (_RSH, _REL, _RWR, _RHIP, _RKN,
                                                              _RAN)}
    parts = []  # (kind, geometry, keypoints owned, clothing, on the far side)

    def limb(chain, width, cloth, is_far):
        for a, b in itertools.pairwise(chain):
            parts.append(("poly", _limb_polygon(kp[a], kp[b], width), (a, b), cloth, is_far))
        for j in chain:
            parts.append(("disk", (kp[j], width), (j,), cloth, is_far))

    fs, fe, fw, fh, fk, fa = sides[far]
    ns, ne, nw, nh, nk, na = sides[near]
    limb((fh, fk, fa), thick * 1.15, "pants", True)
    limb((fs, fe, fw), thick, "shirt", True)
    centre = kp[[_LSH, _RSH, _LHIP, _RHIP]].mean(0)
    corners = kp[[_LSH, _RSH, _RHIP, _LHIP]]
    outward = corners - centre
    norm = np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-6)
    corners = corners + outward / norm * thick * 0.8
    parts.append(("poly", corners, (_LSH, _RSH, _LHIP, _RHIP), "shirt", False))
    limb((nh, nk, na), thick * 1.15, "pants", False)
    parts.append(("disk", (head, head_r), (_NOSE, _LEYE, _REYE, _LEAR, _REAR), "skin", False))
    limb((ns, ne, nw), thick, "shirt", False)
    part_map = np.full(shape, -1, np.int32)
    owners: dict[int, list[int]] = {k: [] for k in range(17)}
    for i, (kind, geom, owned, _, _) in enumerate(parts):
        if kind == "poly":
            rr, cc = polygon(geom[:, 1], geom[:, 0], shape)
        else:
            (x, y), r = geom
            rr, cc = disk((y, x), max(r, 0.8), shape=shape)
        part_map[rr, cc] = i
        for k in owned:
            owners[k].append(i)
    palette = {"skin": rng.uniform(120, 240, 3), "shirt": rng.uniform(0, 255, 3),
               "pants": rng.uniform(0, 255, 3)}
    colours = [palette[cloth] * (0.7 if is_far else 1.0) for *_, cloth, is_far in parts]
    return part_map, owners, np.array(colours)


def render_people(num: int, *, image_size: int = 96, seed: int = 0,
                  min_height: float = 0.5, max_height: float = 0.85,
                  max_rotation: float = 35.0, truncation: float = 0.15,
                  clutter: int = 8) -> PeopleData:
    """Render ``num`` images of ``image_size²`` pixels with one figure each.

    Args:
      num: number of images.
      image_size: side of the square images.
      seed: numpy seed (same seed, same data).
      min_height, max_height: figure height (head to ankles, upright) as a fraction of
        the image side.
      max_rotation: in-plane rotation drawn from ``±max_rotation`` degrees.
      truncation: fraction of figures placed so that they may leave the image (then some
        keypoints get ``v = 0``).
      clutter: at most this many random background shapes.

    Returns:
      :class:`PeopleData` (every figure has at least 5 labelled keypoints).

    Example:
      >>> data = render_people(2, image_size=64, seed=0)
      >>> data.images.shape, data.keypoints.shape
      ((2, 64, 64, 3), (2, 17, 3))
    """
    from skimage.draw import random_shapes

    num = check_int(num, "num", 0)
    size = check_int(image_size, "image_size", 16)
    if not 0 < min_height <= max_height:
        raise ValueError(f"need 0 < min_height <= max_height, got {min_height}, {max_height}")
    rng = np.random.default_rng(seed)
    images = np.zeros((num, size, size, 3), np.uint8)
    keypoints = np.zeros((num, 17, 3), np.float32)
    boxes = np.zeros((num, 4), np.float32)
    areas = np.zeros((num,), np.float32)
    n = 0
    while n < num:
        height = rng.uniform(min_height, max_height) * size
        kp, head, head_r, depth, near = _pose(rng, height)
        angle = math.radians(rng.uniform(-max_rotation, max_rotation))
        centre_local = np.concatenate([kp, head[None]]).mean(0)
        kp = np.array([_rot(p - centre_local, angle) for p in kp])
        head = _rot(head - centre_local, angle)
        margin = 0.5 * height if rng.random() < truncation else 0.0
        lo, hi = kp.min(0), kp.max(0)
        low = -lo - margin + 2
        high = size - 3 - hi + margin
        if np.any(high < low):
            low, high = np.minimum(low, high), np.maximum(low, high)
        shift = rng.uniform(low, high)
        kp, head = kp + shift, head + shift
        thick = max(0.045 * height, 1.0)
        part_map, owners, colours = _draw_figure((size, size), kp, head, head_r, near, thick,
                                                 rng)
        mask = part_map >= 0
        area = int(mask.sum())
        inside = np.all((kp > -0.5) & (kp < size - 0.5), axis=1)
        vis = np.where(inside, 2, 0)
        for k in range(17):
            if not inside[k]:
                continue
            r, c = int(np.rint(kp[k, 1])), int(np.rint(kp[k, 0]))
            on = part_map[min(max(r, 0), size - 1), min(max(c, 0), size - 1)]
            if k in depth:
                hidden = depth[k] <= 0.0 or (on >= 0 and on > max(owners[k]))
            else:
                hidden = on >= 0 and on not in owners[k] and on > max(owners[k])
            if hidden:
                vis[k] = 1
        if np.sum(vis > 0) < 5 or area < 30:
            continue
        clutter_seed = int(rng.integers(2**31))
        background, _ = random_shapes((size, size), max_shapes=max(clutter, 1), min_shapes=1,
                                      min_size=size // 8, max_size=size // 2,
                                      intensity_range=((30, 230),), allow_overlap=True,
                                      num_trials=50, rng=clutter_seed)
        tint = rng.uniform(0.6, 1.0, 3)
        img = background.astype(np.float64) * tint if clutter else np.full(
            (size, size, 3), 200.0)
        img[mask] = colours[part_map[mask]]
        img += rng.normal(0.0, 6.0, img.shape)
        images[n] = np.clip(img, 0, 255).astype(np.uint8)
        rows, cols = np.nonzero(mask)
        boxes[n] = (cols.min() - 0.5, rows.min() - 0.5, cols.max() - cols.min() + 1,
                    rows.max() - rows.min() + 1)
        areas[n] = area
        keypoints[n, :, :2] = kp
        keypoints[n, :, 2] = vis
        n += 1
    return PeopleData(images, keypoints, boxes, areas)


def top_down_crops(images: np.ndarray, boxes: np.ndarray, size: int,
                   padding: float = 1.25) -> tuple[jax.Array, jax.Array]:
    """Square crops around person boxes, resampled to ``size × size``.

    Coordinates are continuous with pixel centres at integers (pixel ``j`` covers
    ``[j − 0.5, j + 0.5]``). The crop covers ``L = padding · max(w, h)`` pixels centred
    on the box, its left edge at ``x₀ = x + w/2 − L/2``; ``r = L / size`` image pixels per
    crop pixel.

    Args:
      images: ``[N, H, W, 3]`` (uint8 or float).
      boxes: ``[N, 4]`` ``[x, y, w, h]`` boxes (spanning ``[x, x + w] × [y, y + h]``).
      size: output side ``S``.
      padding: context factor (> 0; 1.25 as in Simple Baselines).

    Returns:
      ``(crops [N, S, S, 3] float32 in [0, 1], transforms [N, 3] = (x₀, y₀, r))``.

    Example:
      >>> crops, t = top_down_crops(np.zeros((1, 32, 32, 3), np.uint8),
      ...                           np.array([[8., 8., 16., 16.]]), 16, padding=1.0)
      >>> crops.shape, t.tolist()
      ((1, 16, 16, 3), [[8.0, 8.0, 1.0]])
    """
    size = check_int(size, "size")
    if jnp.ndim(images) != 4 or shape_of(images)[-1] != 3:
        raise ValueError(f"images must have shape [N, H, W, 3], got shape "
                         f"{shape_str(shape_of(images))}")
    n = shape_of(images)[0]
    if shape_of(boxes) != (n, 4):
        raise ValueError(f"boxes must have shape [N, 4] = ({n}, 4), got shape "
                         f"{shape_str(shape_of(boxes))}")
    if not padding > 0:
        raise ValueError(f"padding must be > 0, got {padding!r}")
    boxes = np.asarray(boxes, np.float64)
    side = padding * np.maximum(boxes[:, 2], boxes[:, 3])
    side = np.maximum(side, 1.0)
    x0 = boxes[:, 0] + boxes[:, 2] / 2 - side / 2
    y0 = boxes[:, 1] + boxes[:, 3] / 2 - side / 2
    ratio = side / size
    transforms = jnp.asarray(np.stack([x0, y0, ratio], axis=1), jnp.float32)
    x = jnp.asarray(images, jnp.float32)
    if jnp.issubdtype(jnp.asarray(images).dtype, jnp.integer):
        x = x / 255.0

    def one(img, t):
        scale = 1.0 / t[2]
        # scale_and_translate works in edge coordinates (pixel i covers [i, i + 1]):
        # output edge coordinate o ↦ input edge coordinate (x₀ + 0.5) + o · r
        translation = jnp.stack([-(t[1] + 0.5) * scale, -(t[0] + 0.5) * scale])
        return jax.image.scale_and_translate(img, (size, size, 3), (0, 1),
                                             jnp.stack([scale, scale]), translation,
                                             method="linear", antialias=True)

    crops = jax.jit(jax.vmap(one))(x, transforms)
    return crops, transforms


def crop_to_image(xy: jax.Array, transforms: jax.Array) -> jax.Array:
    """Crop pixel coordinates ``[N, K, 2]`` to image pixels: ``x₀ + (x_c + 0.5) · r``.

    Args:
      xy: ``[N, K, 2]`` crop coordinates.
      transforms: ``[N, 3]`` from :func:`top_down_crops`.
    """
    t = jnp.asarray(transforms)
    return t[:, None, :2] + (xy + 0.5) * t[:, None, 2:3]


def image_to_crop(xy: jax.Array, transforms: jax.Array) -> jax.Array:
    """Image pixel coordinates ``[N, K, 2]`` to crop pixels (inverse of
    :func:`crop_to_image`)."""
    t = jnp.asarray(transforms)
    return (xy - t[:, None, :2]) / t[:, None, 2:3] - 0.5

