"""Synthetic faces drawn with ``skimage.draw``: identities, nuisance, exact boxes and landmarks.

No face-identity data set is reachable offline, so faces are rendered. A face is drawn
from two things:

* an **identity vector** ``z ∈ [0, 1]^P`` (:data:`IDENTITY_FIELDS`), a deterministic
  function of the identity id: face-outline width, eye spacing / height / size / aspect,
  brow gap / tilt / arch / thickness, nose length and width, mouth height / width / lip
  thickness, skin, hair and iris tone, hairline;
* per-image **nuisance** (:class:`Nuisance`): in-plane rotation, scale, translation, a
  yaw-like horizontal squeeze (the outline narrows and the inner features slide
  sideways, the nose tip furthest), expression (smile, open mouth, raised brows), a
  linear illumination gradient, Gaussian noise and an occluding rectangle.

Geometry. Every part is a polygon in a *face frame* ``(u, v)`` (outline half-height 1,
``u`` to the image's right, ``v`` down), mapped to pixels by one similarity-plus-squeeze
map ``p = c + s · R(θ) · (σ·u, v)``; the five landmarks are mapped by the same map, so
they are exact: the two pupil centres, the centre of the nose tip and the two mouth
corners (vertices of the lip polygon), in the ArcFace template order (left eye, right
eye, nose, left mouth corner, right mouth corner; "left" is the smaller ``x``).
Coordinates are those of scikit-image: pixel ``(row r, column c)`` has its centre at
``(x, y) = (c, r)``; ``skimage.draw.polygon`` fills the pixels whose centres lie inside a
polygon. A face's box is ``(x0, y0, x1, y1)``, the extent of its outline and hair
polygons: every drawn pixel centre of the face lies inside it, and it is tight to the
rasterisation within 1.5 pixels (a polygon tip may hold no pixel centre).

Identities. Identity ``i`` draws its vector from ``SeedSequence([IDENTITY_SALT, i])``,
independent of the image seed; training identities are ``0 .. n−1`` and test
identities start at :data:`TEST_ID_OFFSET` (:func:`identity_range`), so the two splits
are disjoint by construction, and any number of identities (millions) can be drawn.
Images are deterministic in ``(identities, seed)``.

Scenes for detection (:func:`render_scenes`) place 1–``max_faces`` non-overlapping faces
of random sizes on ``skimage.draw.random_shapes`` clutter (ellipses among it), with
padded boxes, landmarks and a mask.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

__all__ = [
    "IDENTITY_FIELDS",
    "LANDMARK_NAMES",
    "TEST_ID_OFFSET",
    "FaceData",
    "Nuisance",
    "SceneData",
    "face_geometry",
    "identity_range",
    "identity_vectors",
    "render_faces",
    "render_scenes",
    "sample_pairs",
]

#: Landmark order (the ArcFace template's): "left" is the smaller image ``x``.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")

#: Entries of an identity vector (each in ``[0, 1]``, mapped to a range in ``_RANGES``).
IDENTITY_FIELDS = (
    "face_width", "eye_spacing", "eye_height", "eye_size", "eye_aspect", "brow_gap",
    "brow_tilt", "brow_arch", "brow_thickness", "nose_length", "nose_width", "mouth_gap",
    "mouth_width", "lip_thickness", "skin_tone", "hair_tone", "hair_line", "iris_tone",
)

#: First test identity; training identities are ``0 .. TEST_ID_OFFSET − 1``.
TEST_ID_OFFSET = 1_000_000
IDENTITY_SALT = 20_211_212

_RANGES = {  # face-frame units: outline half-height 1
    "face_width": (0.68, 0.92), "eye_spacing": (0.25, 0.42), "eye_height": (-0.30, -0.08),
    "eye_size": (0.09, 0.16), "eye_aspect": (0.45, 0.80), "brow_gap": (0.08, 0.20),
    "brow_tilt": (-0.08, 0.08), "brow_arch": (0.0, 0.08), "brow_thickness": (0.03, 0.07),
    "nose_length": (0.24, 0.44), "nose_width": (0.06, 0.14), "mouth_gap": (0.14, 0.28),
    "mouth_width": (0.17, 0.36), "lip_thickness": (0.03, 0.07), "skin_tone": (0.0, 1.0),
    "hair_tone": (0.0, 1.0), "hair_line": (-0.78, -0.48), "iris_tone": (0.0, 1.0),
}

_SKIN = np.array([[250, 214, 186], [222, 170, 130], [170, 112, 74], [96, 62, 40]], float)
_HAIR = np.array([[20, 16, 14], [84, 52, 30], [150, 70, 30], [220, 190, 120], [170, 170, 170]],
                 float)
_IRIS = np.array([[90, 55, 25], [70, 120, 60], [60, 100, 170]], float)
_SCLERA = np.array([240.0, 240.0, 236.0])
_PUPIL = np.array([15.0, 15.0, 20.0])
_LIP = np.array([180.0, 60.0, 70.0])


def _ramp(palette: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Piecewise-linear colour along ``palette [K, 3]`` at ``t ∈ [0, 1]`` ``[N]`` → ``[N, 3]``."""
    pos = np.clip(np.asarray(t, float), 0.0, 1.0) * (len(palette) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(palette) - 2)
    frac = (pos - lo)[..., None]
    return palette[lo] * (1.0 - frac) + palette[lo + 1] * frac


@dataclasses.dataclass(frozen=True)
class Nuisance:
    """Ranges of the per-image nuisance (all drawn uniformly; zeros give a frontal face).

    Attributes:
      rotation: in-plane rotation in degrees, ``θ ~ U(−rotation, rotation)``.
      scale: relative scale jitter, ``s ← s · U(1 − scale, 1 + scale)``.
      shift: translation as a fraction of the image side, per axis.
      yaw: yaw-like turn ``y ~ U(−yaw, yaw)``: outline squeezed by ``1 − 0.3|y|``,
        inner features moved by ``0.18 y`` (nose tip ``0.28 y``) across the face.
      expression: largest expression strength ``e ~ U(0, expression)``: smile
        (mouth corners up by ``0.08 e``), open mouth, brows raised by ``0.05 e``.
      light: largest relative illumination gradient across the image.
      noise: largest Gaussian noise standard deviation (grey levels of 255).
      occlusion: probability of an occluding rectangle over part of the face.
    """

    rotation: float = 20.0
    scale: float = 0.1
    shift: float = 0.06
    yaw: float = 0.5
    expression: float = 1.0
    light: float = 0.4
    noise: float = 8.0
    occlusion: float = 0.15

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"nuisance.{f.name} must be a finite number >= 0, got {value!r}")
        if self.scale >= 1 or self.yaw > 1 or self.occlusion > 1 or self.light >= 1:
            raise ValueError("nuisance.scale and nuisance.light must be < 1, nuisance.yaw and "
                             f"nuisance.occlusion <= 1, got {self}")


NO_NUISANCE = Nuisance(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class FaceData:
    """Face images (one face each) with their annotations.

    Attributes:
      images: ``[N, S, S, 3]`` uint8.
      landmarks: ``[N, 5, 2]`` float32 ``(x, y)`` pixels in :data:`LANDMARK_NAMES` order.
      boxes: ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` pixels (may extend past the image).
      labels: ``[N]`` int64 identity ids.
    """

    images: np.ndarray
    landmarks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclasses.dataclass(frozen=True)
class SceneData:
    """Cluttered scenes with up to ``T`` faces each (padded).

    Attributes:
      images: ``[N, S, S, 3]`` uint8.
      boxes: ``[N, T, 4]`` float32 ``(x0, y0, x1, y1)`` pixels, inside the image.
      landmarks: ``[N, T, 5, 2]`` float32 ``(x, y)`` pixels.
      mask: ``[N, T]`` bool, True for real faces (padded slots hold zeros).
      labels: ``[N, T]`` int64 identity ids (−1 in padded slots).
    """

    images: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    mask: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def boxes_xywh(self, n: int) -> np.ndarray:
        """Image ``n``'s faces as ``[T_n, 4]`` pixel ``(x, y, w, h)`` boxes (COCO)."""
        b = self.boxes[n, self.mask[n]].astype(np.float64)
        return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=-1)


# ----------------------------------------------------------------------------- identities


def identity_range(split: str, count: int) -> np.ndarray:
    """The ids of the first ``count`` identities of ``split`` (``"train"`` or ``"test"``).

    Training ids are ``0 .. count − 1``, test ids ``TEST_ID_OFFSET + (0 .. count − 1)``:
    disjoint for any ``count < TEST_ID_OFFSET``.

    Example:
      >>> identity_range("test", 2).tolist()
      [1000000, 1000001]
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not (
            0 <= count < TEST_ID_OFFSET):
        raise ValueError(f"count must be an integer in [0, {TEST_ID_OFFSET}), got {count!r}")
    return np.arange(count, dtype=np.int64) + (TEST_ID_OFFSET if split == "test" else 0)


def _check_ids(identities, name: str = "identities") -> np.ndarray:
    ids = np.asarray(identities)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D array of integer ids [N], got shape "
                         f"{ids.shape} and dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name} must be >= 0, got values such as {ids[ids < 0][:3].tolist()}")
    return ids.astype(np.int64)


def identity_vectors(identities) -> np.ndarray:
    """The identity vectors ``z [N, P] ∈ [0, 1]`` of integer ids ``[N]`` (P = 18).

    ``z_i ~ U[0, 1]^P`` from ``numpy.random.default_rng(SeedSequence([salt, i]))``: a
    pure function of the id.

    Example:
      >>> z = identity_vectors([3, 3, 4])
      >>> bool((z[0] == z[1]).all()), bool((z[0] == z[2]).all())
      (True, False)
    """
    ids = _check_ids(identities)
    out = np.empty((ids.size, len(IDENTITY_FIELDS)))
    for k, i in enumerate(ids):
        out[k] = np.random.default_rng([IDENTITY_SALT, int(i)]).random(len(IDENTITY_FIELDS))
    return out


def _fields(z: np.ndarray) -> dict[str, float]:
    return {name: lo + (hi - lo) * float(z[k])
            for k, name in enumerate(IDENTITY_FIELDS) for lo, hi in [_RANGES[name]]}


# ----------------------------------------------------------------------------- geometry


def _ellipse(cu, cv, ru, rv, n=40, lo=0.0, hi=2 * np.pi):
    t = np.linspace(lo, hi, n, endpoint=False)
    return np.stack([cu + ru * np.cos(t), cv + rv * np.sin(t)], -1)


def face_geometry(z: np.ndarray, *, yaw: float = 0.0, expression: float = 0.0):
    """The face's polygons and landmarks in the face frame (outline half-height 1).

    Args:
      z: ``[P]`` identity vector in ``[0, 1]``.
      yaw: yaw-like turn in ``[−1, 1]`` (inner features slide by ``0.18 · yaw``).
      expression: expression strength in ``[0, 1]``.

    Returns:
      ``(parts, landmarks [5, 2], squeeze)``: ``parts`` is a list of
      ``(name, polygon [K, 2] (u, v))`` in drawing order; the map to pixels multiplies
      ``u`` by ``squeeze = 1 − 0.3 |yaw|``.

    Example:
      >>> parts, lm, sq = face_geometry(identity_vectors([0])[0])
      >>> lm.shape, parts[0][0]
      ((5, 2), 'hair')
    """
    f = _fields(np.asarray(z, float))
    shift = 0.18 * yaw
    a = f["face_width"]
    parts = []
    # hair: the cap of an enlarged outline down to eye level, then the face, then the fringe
    hair = _ellipse(0.0, -0.02, 1.1 * a, 1.08, 72)
    parts.append(("hair", hair[hair[:, 1] <= f["eye_height"]]))
    outline = _ellipse(0.0, 0.0, a, 1.0, 72)
    parts.append(("face", outline))
    parts.append(("fringe", outline[outline[:, 1] <= f["hair_line"]]))
    eye_v = f["eye_height"]
    ew, eh = f["eye_size"], f["eye_size"] * f["eye_aspect"]
    eyes = [(-f["eye_spacing"] + shift, eye_v), (f["eye_spacing"] + shift, eye_v)]
    raise_ = 0.05 * expression
    for side, (eu, ev) in zip((-1.0, 1.0), eyes, strict=True):
        t = np.linspace(-1.0, 1.0, 9)
        centre_v = ev - eh - f["brow_gap"] - raise_
        mid = centre_v - f["brow_arch"] * (1 - t ** 2) + side * f["brow_tilt"] * t
        us = eu + 1.2 * ew * t
        half = 0.5 * f["brow_thickness"]
        brow = np.concatenate([np.stack([us, mid - half], -1),
                               np.stack([us[::-1], (mid + half)[::-1]], -1)])
        parts.append(("brow", brow))
        parts.append(("sclera", _ellipse(eu, ev, ew, eh, 24)))
        parts.append(("iris", _ellipse(eu, ev, 0.9 * eh, 0.9 * eh, 20)))
        parts.append(("pupil", _ellipse(eu, ev, 0.45 * eh, 0.45 * eh, 16)))
    tip_u, tip_v = 0.28 * yaw, eye_v + f["nose_length"]
    nw = f["nose_width"]
    bridge = np.array([[shift - 0.25 * nw, eye_v + 0.04], [shift + 0.25 * nw, eye_v + 0.04],
                       [tip_u + 0.6 * nw, tip_v], [tip_u - 0.6 * nw, tip_v]])
    parts.append(("bridge", bridge))
    parts.append(("nose", _ellipse(tip_u, tip_v, nw, 0.6 * nw, 20)))
    mouth_v = tip_v + f["mouth_gap"]
    mw, lip = f["mouth_width"], f["lip_thickness"]
    smile = 0.08 * expression - 0.02
    opening = 0.08 * expression ** 2
    t = np.linspace(-1.0, 1.0, 17)
    us = shift + mw * t
    corner = 0.015  # half thickness of the lips at the corners
    upper = mouth_v - smile * t ** 2 - lip * (1 - t ** 2) - corner
    lower = mouth_v - smile * t ** 2 + (lip + opening) * (1 - t ** 2) + corner
    parts.append(("mouth", np.concatenate([np.stack([us, upper], -1),
                                           np.stack([us[::-1], lower[::-1]], -1)])))
    corner_v = mouth_v - smile
    landmarks = np.array([eyes[0], eyes[1], [tip_u, tip_v], [shift - mw, corner_v],
                          [shift + mw, corner_v]])
    return parts, landmarks, 1.0 - 0.3 * abs(yaw)


def _to_pixels(points: np.ndarray, centre, scale: float, angle: float, squeeze: float):
    """``c + s · R(θ) · (σ u, v)`` for ``points [K, 2] (u, v)`` → ``[K, 2] (x, y)``."""
    c, s = np.cos(angle), np.sin(angle)
    u = points[..., 0] * squeeze
    v = points[..., 1]
    return np.stack([centre[0] + scale * (c * u - s * v), centre[1] + scale * (s * u + c * v)],
                    -1)


def _colours(z: np.ndarray) -> dict[str, np.ndarray]:
    f = _fields(z)
    skin = _ramp(_SKIN, f["skin_tone"])
    hair = _ramp(_HAIR, f["hair_tone"])
    return {"hair": hair, "face": skin, "fringe": hair, "brow": 0.6 * hair,
            "sclera": _SCLERA, "iris": _ramp(_IRIS, f["iris_tone"]), "pupil": _PUPIL,
            "bridge": 0.88 * skin, "nose": 0.7 * skin, "mouth": 0.5 * skin + 0.5 * _LIP}


def _draw_face(canvas: np.ndarray, z: np.ndarray, centre, scale: float, angle: float,
               yaw: float, expression: float):
    """Draw one face into ``canvas [H, W, 3]`` (float, in place); landmarks and box."""
    from skimage.draw import polygon

    parts, lm, squeeze = face_geometry(z, yaw=yaw, expression=expression)
    colours = _colours(z)
    extent = []
    for name, poly in parts:
        xy = _to_pixels(poly, centre, scale, angle, squeeze)
        if name in ("hair", "face"):
            extent.append(xy)
        rr, cc = polygon(xy[:, 1], xy[:, 0], canvas.shape[:2])
        canvas[rr, cc] = colours[name]
    extent = np.concatenate(extent)
    box = np.concatenate([extent.min(0), extent.max(0)])
    return _to_pixels(lm, centre, scale, angle, squeeze), box


def _half_extent(z: np.ndarray, scale: float, angle: float, yaw: float):
    """The face's box relative to its centre (for placing it inside a scene)."""
    parts, _, squeeze = face_geometry(z, yaw=yaw)
    xy = _to_pixels(np.concatenate([p for n, p in parts if n in ("hair", "face")]),
                    (0.0, 0.0), scale, angle, squeeze)
    return xy.min(0), xy.max(0)


def _finish(images: np.ndarray, rng: np.random.Generator, nuisance: Nuisance,
            gray_prob: float = 0.0) -> np.ndarray:
    """Illumination gradient, noise and optional grey conversion, vectorised over images."""
    n, h, w, _ = images.shape
    strength = rng.uniform(0.0, nuisance.light, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    sigma = rng.uniform(0.0, nuisance.noise, n)
    gray = rng.random(n) < gray_prob
    ys, xs = np.meshgrid(np.linspace(-0.5, 0.5, h), np.linspace(-0.5, 0.5, w), indexing="ij")
    ramp = (np.cos(phi)[:, None, None] * xs[None] + np.sin(phi)[:, None, None] * ys[None])
    gain = 1.0 + 2.0 * strength[:, None, None] * ramp  # [N, H, W]
    out = images * gain[..., None] + sigma[:, None, None, None] * rng.standard_normal(
        images.shape)
    grey = out @ np.array([0.299, 0.587, 0.114])
    out = np.where(gray[:, None, None, None], grey[..., None], out)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _occlude(canvas, box, rng, probability):
    if rng.random() >= probability:
        return
    x0, y0, x1, y1 = box
    bw, bh = (x1 - x0) * rng.uniform(0.25, 0.5), (y1 - y0) * rng.uniform(0.2, 0.4)
    px, py = rng.uniform(x0, x1 - bw), rng.uniform(y0, y1 - bh)
    r0, r1 = int(np.clip(np.ceil(py), 0, canvas.shape[0])), int(
        np.clip(np.floor(py + bh) + 1, 0, canvas.shape[0]))
    c0, c1 = int(np.clip(np.ceil(px), 0, canvas.shape[1])), int(
        np.clip(np.floor(px + bw) + 1, 0, canvas.shape[1]))
    canvas[r0:r1, c0:c1] = rng.uniform(0, 255, 3)


def _check_size(size, name="size", minimum=16):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {size!r}")
    return int(size)


def render_faces(identities, *, size: int = 64, seed: int = 0,
                 nuisance: Nuisance = Nuisance(), face_scale: float = 0.32) -> FaceData:
    """Render one face image per entry of ``identities`` (an id may repeat).

    The face centre is the image centre moved by the nuisance shift; its outline
    half-height is ``face_scale · size`` times the scale jitter. The background is a
    random flat colour; the nuisance of every image is drawn from ``seed``.

    Args:
      identities: ``[N]`` integer identity ids (>= 0).
      size: image side ``S`` in pixels (>= 16).
      seed: seed of the nuisance.
      nuisance: a :class:`Nuisance` (``NO_NUISANCE`` for frontal, clean faces).
      face_scale: outline half-height as a fraction of ``size``, in ``(0, 0.5]``.

    Returns:
      A :class:`FaceData` with ``labels = identities``.

    Example:
      >>> data = render_faces([0, 0, 7], size=48, seed=1)
      >>> data.images.shape, data.landmarks.shape
      ((3, 48, 48, 3), (3, 5, 2))
    """
    ids = _check_ids(identities)
    size = _check_size(size)
    if not (isinstance(face_scale, (int, float)) and 0 < face_scale <= 0.5):
        raise ValueError(f"face_scale must lie in (0, 0.5], got {face_scale!r}")
    if not isinstance(nuisance, Nuisance):
        raise ValueError(f"nuisance must be a Nuisance, got {type(nuisance).__name__}")
    nuisance.validate()
    rng = np.random.default_rng([int(seed), 1])
    z = identity_vectors(ids)
    n = ids.size
    images = np.empty((n, size, size, 3))
    landmarks = np.zeros((n, 5, 2), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    angle = np.deg2rad(rng.uniform(-nuisance.rotation, nuisance.rotation, n))
    scale = face_scale * size * rng.uniform(1 - nuisance.scale, 1 + nuisance.scale, n)
    centre = size / 2 - 0.5 + size * rng.uniform(-nuisance.shift, nuisance.shift, (n, 2))
    yaw = rng.uniform(-nuisance.yaw, nuisance.yaw, n)
    expression = rng.uniform(0.0, nuisance.expression, n)
    background = rng.uniform(30, 225, (n, 3))
    for k in range(n):
        images[k] = background[k]
        landmarks[k], boxes[k] = _draw_face(images[k], z[k], centre[k], scale[k], angle[k],
                                            yaw[k], expression[k])
        _occlude(images[k], boxes[k], rng, nuisance.occlusion)
    return FaceData(_finish(images, rng, nuisance), landmarks, boxes, ids)


def _clutter(rng: np.random.Generator, size: int, max_shapes: int) -> np.ndarray:
    from skimage.draw import random_shapes

    if max_shapes == 0:
        return np.full((size, size, 3), rng.uniform(40, 230, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not fit any shapes" is expected sometimes
        image, _ = random_shapes((size, size), max_shapes=max_shapes, min_shapes=1,
                                 min_size=max(4, size // 12), max_size=max(6, size // 3),
                                 intensity_range=((20, 235),), allow_overlap=True,
                                 rng=int(rng.integers(2 ** 31)))
    image = image.astype(float)
    white = np.all(image == 255, axis=-1)
    image[white] = rng.uniform(40, 230, 3)  # a coloured background instead of white
    return image


def render_scenes(num_images: int, *, identities=None, size: int = 96, max_faces: int = 3,
                  min_face: float = 8.0, max_face: float = 22.0, clutter: int = 6,
                  seed: int = 0, nuisance: Nuisance = Nuisance(), gray_prob: float = 0.0,
                  ) -> SceneData:
    """Cluttered scenes with 1–``max_faces`` non-overlapping faces each, for detection.

    Faces have outline half-heights ``U(min_face, max_face)`` pixels and lie wholly
    inside the image; their identities are drawn from ``identities`` (default: the
    first 1000 training ids). Clutter is ``skimage.draw.random_shapes`` (up to
    ``clutter`` shapes, overlapping allowed) on a random background colour; faces are
    drawn over it. A face that cannot be placed after 30 tries is dropped (at least one
    per image is always placed: the first try region is the whole image).

    Args:
      num_images: ``N``.
      identities: ``[M]`` ids to draw faces of (default ``identity_range("train", 1000)``).
      size: image side ``S``.
      max_faces: faces per image at most (``T``, the padded count).
      min_face, max_face: range of the outline half-height in pixels.
      clutter: random shapes per image at most (0: a flat background).
      seed: seed of everything.
      nuisance: the faces' :class:`Nuisance` (its ``shift`` and ``scale`` are unused:
        placement and size are drawn as above).
      gray_prob: probability of converting an image to grey.

    Returns:
      A :class:`SceneData`.

    Example:
      >>> scenes = render_scenes(2, size=64, max_faces=2, seed=3)
      >>> scenes.images.shape, scenes.boxes.shape, bool(scenes.mask[:, 0].all())
      ((2, 64, 64, 3), (2, 2, 4), True)
    """
    n = _check_size(num_images, "num_images", 0)
    size = _check_size(size)
    max_faces = _check_size(max_faces, "max_faces", 1)
    clutter = _check_size(clutter, "clutter", 0)
    if not 2.0 <= min_face <= max_face <= 0.35 * size:
        raise ValueError(f"need 2 <= min_face <= max_face <= 0.35 * size, got min_face="
                         f"{min_face}, max_face={max_face}, size={size}")
    if not 0.0 <= gray_prob <= 1.0:
        raise ValueError(f"gray_prob must lie in [0, 1], got {gray_prob!r}")
    nuisance.validate()
    pool = identity_range("train", 1000) if identities is None else _check_ids(
        identities, "identities")
    if pool.size == 0:
        raise ValueError("identities must hold at least one id")
    rng = np.random.default_rng([int(seed), 2])
    images = np.empty((n, size, size, 3))
    boxes = np.zeros((n, max_faces, 4), np.float32)
    landmarks = np.zeros((n, max_faces, 5, 2), np.float32)
    mask = np.zeros((n, max_faces), bool)
    labels = np.full((n, max_faces), -1, np.int64)
    for k in range(n):
        images[k] = _clutter(rng, size, clutter)
        count = int(rng.integers(1, max_faces + 1))
        placed: list[np.ndarray] = []
        for _ in range(count):
            ident = int(pool[rng.integers(pool.size)])
            z = identity_vectors([ident])[0]
            scale = rng.uniform(min_face, max_face)
            angle = np.deg2rad(rng.uniform(-nuisance.rotation, nuisance.rotation))
            yaw = rng.uniform(-nuisance.yaw, nuisance.yaw)
            expression = rng.uniform(0.0, nuisance.expression)
            lo, hi = _half_extent(z, scale, angle, yaw)
            for _try in range(30):
                c = rng.uniform(-lo + 0.5, size - 1.5 - hi)
                box = np.concatenate([c + lo, c + hi])
                if all(box[0] > b[2] + 1 or box[2] + 1 < b[0] or box[1] > b[3] + 1
                       or box[3] + 1 < b[1] for b in placed):
                    break
            else:
                continue
            t = len(placed)
            landmarks[k, t], boxes[k, t] = _draw_face(images[k], z, c, scale, angle, yaw,
                                                      expression)
            _occlude(images[k], boxes[k, t], rng, nuisance.occlusion)
            placed.append(boxes[k, t])
            mask[k, t] = True
            labels[k, t] = ident
    return SceneData(_finish(images, rng, nuisance, gray_prob), boxes, landmarks, mask, labels)


def sample_pairs(labels, num_pairs: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """Verification pairs: ``num_pairs // 2`` same-identity pairs, the rest different,
    alternating (same, different, same, ...) so that contiguous folds are balanced.

    Args:
      labels: ``[N]`` identity ids of a set of images (each id at least twice for
        same-identity pairs).
      num_pairs: ``P``.
      seed: the sampling seed.

    Returns:
      ``(i [P], j [P], same [P] bool)``: indices into the set; pair ``2k`` is a
      same-identity pair for ``k < num_pairs // 2``.

    Example:
      >>> i, j, same = sample_pairs(np.array([0, 0, 1, 1]), 4)
      >>> same.tolist()
      [True, False, True, False]
    """
    labels = _check_ids(labels, "labels")
    num_pairs = _check_size(num_pairs, "num_pairs", 2)
    rng = np.random.default_rng([int(seed), 3])
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if not np.any(counts >= 2) or uniq.size < 2:
        raise ValueError("labels must hold some id at least twice and at least two ids")
    n_same = num_pairs // 2
    members = [np.flatnonzero(inverse == u) for u in range(uniq.size)]
    multi = np.flatnonzero(counts >= 2)
    ids = rng.choice(multi, n_same)
    same_pairs = np.array([rng.choice(members[u], 2, replace=False) for u in ids]).reshape(-1, 2)
    n_diff = num_pairs - n_same
    i = rng.integers(0, labels.size, n_diff * 4)
    j = rng.integers(0, labels.size, n_diff * 4)
    keep = np.flatnonzero(labels[i] != labels[j])[:n_diff]
    while keep.size < n_diff:  # very unlikely with more than two ids
        i = np.concatenate([i, rng.integers(0, labels.size, n_diff)])
        j = np.concatenate([j, rng.integers(0, labels.size, n_diff)])
        keep = np.flatnonzero(labels[i] != labels[j])[:n_diff]
    first = np.concatenate([same_pairs[:, 0], i[keep]])
    second = np.concatenate([same_pairs[:, 1], j[keep]])
    same = np.arange(num_pairs) < n_same
    order = np.argsort(np.concatenate([2 * np.arange(n_same), 2 * np.arange(n_diff) + 1]),
                       kind="stable")
    return first[order], second[order], same[order]
