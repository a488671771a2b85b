"""Synthetic visual question answering: scenes of coloured shapes at native sizes.

Each scene is an ``H × W`` image (both sides drawn from ``sides``, so wide, tall and
square images appear, up to ``max(sides)/min(sides)`` : 1) on a white background with
1–``max_objects`` non-overlapping shapes (circle, square, triangle), each a distinct
colour, drawn by this module's own renderer (pixel-centre tests of a disc, a square and
an upward triangle). Every scene has a caption (its objects left to right, e.g.
``"red circle, blue square"``) and one templated question with a short answer, of one of
five types:

* ``count``: "how many shapes?" → ``"3"``;
* ``colour``: "what colour is the circle?" (a shape drawn once) → ``"red"``;
* ``shape``: "what shape is the red one?" → ``"circle"``;
* ``position``: "is the red one left of the blue one?" (wide or square images) or
  "... above ..." (tall images) → ``"yes"`` / ``"no"``, centres at least a sixth of
  the side apart;
* ``size``: "is the red one bigger than the blue one?" → ``"yes"`` / ``"no"``, areas at
  least 1.5× apart.

A question type that a scene cannot support (one object, no unique shape, no clear
pair) is replaced by another. Train and test sets are drawn from different seeds.

Example:
    >>> ex = make_examples(4, seed=0, sides=(28, 56))[0]
    >>> ex.image.shape[2], ex.qtype in QUESTION_TYPES
    (3, True)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from common.checks import check_int
from common.text import ByteTokenizer

__all__ = [
    "ALPHABET",
    "COLOURS",
    "QUESTION_TYPES",
    "SHAPES",
    "VQAExample",
    "make_examples",
    "render_scene",
    "resize_square",
    "tokenizer",
]

COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),
           "yellow": (225, 200, 30), "purple": (140, 60, 180), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle")
QUESTION_TYPES = ("count", "colour", "shape", "position", "size")
#: every character of captions, questions and answers
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?:,"


def tokenizer() -> ByteTokenizer:
    """The byte tokenizer of this data (``<image>`` is id ``vocab_size``, one past it)."""
    return ByteTokenizer(ALPHABET)


@dataclasses.dataclass(frozen=True)
class VQAExample:
    """One scene with its caption and question.

    Attributes:
      image: ``[H, W, 3]`` float32 in ``[0, 1]``.
      objects: ``(shape, colour, centre_row, centre_col, area)`` of each object.
      caption, question, answer: text.
      qtype: one of ``QUESTION_TYPES``.
    """

    image: np.ndarray
    objects: tuple[tuple[str, str, float, float, int], ...]
    caption: str
    question: str
    answer: str
    qtype: str

    @property
    def aspect(self) -> float:
        """``max(H, W) / min(H, W)``."""
        h, w = self.image.shape[:2]
        return max(h, w) / min(h, w)


def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` mask of a shape filling its box (pixel-centre tests)."""
    c = (np.arange(size) + 0.5) / size  # [size] pixel centres in [0, 1]
    y, x = c[:, None], c[None, :]
    if shape == "circle":
        return (y - 0.5) ** 2 + (x - 0.5) ** 2 <= 0.25
    if shape == "square":
        return np.ones((size, size), bool) & (y > 0.08) & (y < 0.92) & (x > 0.08) & (x < 0.92)
    # upward triangle: apex at the top centre, base at the bottom
    return (y >= 0.05) & (np.abs(x - 0.5) <= 0.5 * (y - 0.05) / 0.95 + 1e-9) & (y <= 0.98)


def render_scene(rng: np.random.Generator, height: int, width: int, num_objects: int):
    """Draw up to ``num_objects`` non-overlapping shapes of distinct colours.

    Box sides are ``U[0.25, 0.5]·min(H, W)`` (at least 7 px); boxes are placed by
    rejection (40 tries each), so crowded small images hold fewer objects.

    Returns:
      ``(image [H, W, 3] float32 in [0, 1], objects)`` with at least one object.
    """
    image = np.ones((height, width, 3), np.float32)
    short = min(height, width)
    colours = rng.permutation(list(COLOURS))[:num_objects]
    boxes, objects = [], []
    for colour in colours:
        for _ in range(40):
            s = int(max(7, min(short, round(rng.uniform(0.25, 0.5) * short))))
            r0 = int(rng.integers(0, height - s + 1))
            c0 = int(rng.integers(0, width - s + 1))
            if all(r0 + s + 1 <= a or a + t + 1 <= r0 or c0 + s + 1 <= b or b + t + 1 <= c0
                   for a, b, t in boxes):
                break
        else:
            continue
        shape = str(rng.choice(SHAPES))
        mask = _shape_mask(shape, s)
        image[r0:r0 + s, c0:c0 + s][mask] = np.array(COLOURS[colour], np.float32) / 255.0
        boxes.append((r0, c0, s))
        objects.append((shape, str(colour), r0 + s / 2, c0 + s / 2, int(mask.sum())))
    if not objects:  # unreachable for s <= short, kept for safety
        raise RuntimeError("no object could be placed")
    return image, tuple(objects)


def _question(rng: np.random.Generator, objects, height: int, width: int, qtype: str):
    """``(question, answer)`` of type ``qtype``, or None when the scene cannot support it."""
    if qtype == "count":
        n = len(objects)
        return "how many shapes?", str(n)
    if qtype == "colour":
        shapes = [o[0] for o in objects]
        unique = [o for o in objects if shapes.count(o[0]) == 1]
        if not unique:
            return None
        o = unique[rng.integers(len(unique))]
        return f"what colour is the {o[0]}?", o[1]
    if qtype == "shape":
        o = objects[rng.integers(len(objects))]
        return f"what shape is the {o[1]} one?", o[0]
    if len(objects) < 2:
        return None
    pairs = [(a, b) for a in objects for b in objects if a is not b]
    rng.shuffle(pairs)
    for a, b in pairs:
        if qtype == "position":
            tall = height > width
            axis, side = (2, height) if tall else (3, width)
            if abs(a[axis] - b[axis]) < side / 6:
                continue
            word = "above" if tall else "left of"
            return f"is the {a[1]} one {word} the {b[1]} one?", "yes" if a[axis] < b[axis] else "no"
        if max(a[4], b[4]) >= 1.5 * min(a[4], b[4]):
            return f"is the {a[1]} one bigger than the {b[1]} one?", "yes" if a[4] > b[4] else "no"
    return None


def make_examples(n: int, seed: int, *, sides=(56, 112, 168, 224, 280, 336),
                  max_objects: int = 6) -> list[VQAExample]:
    """``n`` scenes with captions and questions; question types cycle evenly.

    Args:
      n: number of examples.
      seed: the split's seed (use different seeds for train and test).
      sides: image side lengths; height and width are drawn independently.
      max_objects: at most this many shapes (1–6).

    Returns:
      A list of :class:`VQAExample`.
    """
    check_int(n, "n", 0)
    check_int(max_objects, "max_objects", 1, len(COLOURS))
    if not sides or any(int(s) < 8 for s in sides):
        raise ValueError(f"sides must list image sides of at least 8 pixels, got {sides!r}")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (int(rng.choice(sides)) for _ in range(2))
        image, objects = render_scene(rng, h, w, int(rng.integers(1, max_objects + 1)))
        order = sorted(objects, key=lambda o: o[3])
        caption = ", ".join(f"{o[1]} {o[0]}" for o in order)
        types = list(QUESTION_TYPES[i % len(QUESTION_TYPES):]) + list(
            QUESTION_TYPES[:i % len(QUESTION_TYPES)])
        for qtype in types:
            qa = _question(rng, objects, h, w, qtype)
            if qa is not None:
                break
        out.append(VQAExample(image, objects, caption, qa[0], qa[1], qtype))
    return out


def resize_square(image: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize (with anti-aliasing) to ``side × side``: the fixed-resolution
    baseline's input (``skimage.transform.resize``)."""
    from skimage.transform import resize

    check_int(side, "side")
    return resize(image, (side, side), order=1, anti_aliasing=True).astype(np.float32)
