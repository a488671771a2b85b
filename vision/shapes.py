"""A synthetic detection set: coloured shapes from ``skimage.draw.random_shapes``.

Each image has its own size ``(h, w)`` (``min_image_size``–``image_size`` pixels a
side) and holds 1–``max_objects`` non-overlapping circles, rectangles, triangles and
ellipses of random sizes and colours on a white background. Images are stored
zero-padded at the top-left of an ``image_size × image_size`` canvas, with their real
size, so a batch carries DETR's padding masks.

Boxes come from the label bounds ``random_shapes`` returns (half-open pixel ranges
``[r0, r1) × [c0, c1)``, which equal the tight bounds of the drawn pixels). Two
details of ``random_shapes`` are handled here:

* ``allow_overlap=False``: shapes never share a pixel, so no object is hidden by
  another and every box is fully visible;
* a triangle started near the top edge can get a negative top row, which numpy
  indexing wraps to the bottom of the image (a stray, unannotated blob); images with
  any label bound outside the image are drawn again with the next seed.

Targets are padded to ``max_objects``: ``labels [N, T]``, normalised ``cxcywh`` boxes
``[N, T, 4]`` (relative to each image's real width and height, as DETR normalises),
``box_mask [N, T]``.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np

__all__ = ["CLASSES", "ShapesData", "generate_shapes", "pixel_mask"]

#: Class names in class-id order (COCO category id = class id + 1).
CLASSES = ("circle", "rectangle", "triangle", "ellipse")


@dataclasses.dataclass(frozen=True)
class ShapesData:
    """A generated split (numpy arrays, ``N`` images, ``T`` target slots).

    Attributes:
      images: ``[N, S, S, 3]`` uint8, image ``n`` in ``[:h_n, :w_n]``, zeros elsewhere.
      sizes: ``[N, 2]`` int32 real ``(height, width)``.
      labels: ``[N, T]`` int32 class ids (0 in padded slots).
      boxes: ``[N, T, 4]`` float32 normalised ``cxcywh`` (0 in padded slots).
      box_mask: ``[N, T]`` bool, ``True`` for real objects.
    """

    images: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    box_mask: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def boxes_xywh(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``n``'s real objects as pixel ``[x, y, w, h]`` boxes and class ids."""
        keep = self.box_mask[n]
        h, w = self.sizes[n]
        cx, cy, bw, bh = (self.boxes[n, keep] * np.array([w, h, w, h])).T
        xywh = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=-1)
        return xywh, self.labels[n, keep]

    def as_arrays(self) -> dict[str, np.ndarray]:
        return dataclasses.asdict(self)


def _draw(rng_seed: int, size: tuple[int, int], max_objects: int, min_shape: int,
          max_shape: int):
    from skimage.draw import random_shapes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not fit any shapes" is expected sometimes
        return random_shapes(size, max_shapes=max_objects, min_shapes=1, min_size=min_shape,
                             max_size=max_shape, intensity_range=((0, 200),),
                             allow_overlap=False, rng=rng_seed)


def generate_shapes(num_images: int, *, image_size: int = 64, min_image_size: int = 48,
                    max_objects: int = 6, min_shape: int = 8, max_shape: int = 24,
                    seed: int = 0) -> ShapesData:
    """Generate ``num_images`` images with COCO-style annotations (deterministic in ``seed``).

    Args:
      num_images: ``N``.
      image_size: canvas side ``S`` and largest image side.
      min_image_size: smallest image side (sides are uniform in ``[min, S]``).
      max_objects: most shapes per image (also the padded target count ``T``).
      min_shape, max_shape: size range of a shape in pixels.
      seed: seed of the whole split.

    Returns:
      A :class:`ShapesData`.

    Example:
      >>> data = generate_shapes(4, seed=1)
      >>> data.images.shape, data.boxes.shape
      ((4, 64, 64, 3), (4, 6, 4))
    """
    if not 1 <= min_image_size <= image_size:
        raise ValueError(f"need 1 <= min_image_size <= image_size, got {min_image_size}, "
                         f"{image_size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if not 2 <= min_shape <= max_shape or min_shape > min_image_size:
        raise ValueError(f"need 2 <= min_shape <= max_shape and min_shape <= min_image_size, "
                         f"got {min_shape}, {max_shape}, {min_image_size}")
    rng = np.random.default_rng(seed)
    images = np.zeros((num_images, image_size, image_size, 3), np.uint8)
    sizes = np.zeros((num_images, 2), np.int32)
    labels = np.zeros((num_images, max_objects), np.int32)
    boxes = np.zeros((num_images, max_objects, 4), np.float32)
    box_mask = np.zeros((num_images, max_objects), bool)
    class_of = {name: i for i, name in enumerate(CLASSES)}
    for n in range(num_images):
        h, w = (int(v) for v in rng.integers(min_image_size, image_size + 1, size=2))
        while True:
            image, shapes = _draw(int(rng.integers(2**31)), (h, w), max_objects, min_shape,
                                  max_shape)
            inside = all(0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w
                         for _, ((r0, r1), (c0, c1)) in shapes)
            if inside:
                break
        images[n, :h, :w] = image
        sizes[n] = (h, w)
        for k, (name, ((r0, r1), (c0, c1))) in enumerate(shapes):
            labels[n, k] = class_of[name]
            boxes[n, k] = ((c0 + c1) / 2 / w, (r0 + r1) / 2 / h, (c1 - c0) / w, (r1 - r0) / h)
            box_mask[n, k] = True
    return ShapesData(images, sizes, labels, boxes, box_mask)


def pixel_mask(sizes, image_size: int):
    """``[N, S, S]`` boolean mask of real pixels from ``sizes [N, 2]`` (numpy or JAX).

    Example:
      >>> int(pixel_mask(np.array([[2, 3]]), 4).sum())
      6
    """
    xp = np if isinstance(sizes, np.ndarray) else jnp
    idx = xp.arange(image_size)
    rows = idx[None, :, None] < sizes[:, 0, None, None]
    cols = idx[None, None, :] < sizes[:, 1, None, None]
    return rows & cols
