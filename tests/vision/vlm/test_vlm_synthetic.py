"""Synthetic shape VQA: seeded splits, native sizes and aspect ratios, and answers checked
against the rendered pixels and the object list."""

import re

import numpy as np
import pytest

from vision.vlm.synthetic import (
    COLOURS,
    QUESTION_TYPES,
    SHAPES,
    make_examples,
    render_scene,
    resize_square,
    tokenizer,
)

SIDES = (28, 56, 84, 112)


@pytest.fixture(scope="module")
def examples():
    return make_examples(150, seed=3, sides=SIDES)


def test_split_by_seed_and_sizes(examples):
    again = make_examples(5, seed=3, sides=SIDES)
    other = make_examples(5, seed=4, sides=SIDES)
    for a, b in zip(examples[:5], again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.question == b.question
    assert any(not np.array_equal(a.image, b.image) if a.image.shape == b.image.shape else True
               for a, b in zip(again, other, strict=True))
    shapes = {e.image.shape[:2] for e in examples}
    assert all(h in SIDES and w in SIDES for h, w in shapes)
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)
    assert max(e.aspect for e in examples) == 4.0
    assert {e.qtype for e in examples} == set(QUESTION_TYPES)


def distinct_colours(image):
    """The object colours present in an image (pixels equal to a palette colour)."""
    pixels = np.round(image.reshape(-1, 3) * 255).astype(int)
    return {name for name, rgb in COLOURS.items() if np.any(np.all(pixels == rgb, axis=1))}


def test_answers_agree_with_pixels_and_objects(examples):
    tok = tokenizer()
    for e in examples:
        colours = {o[1] for o in e.objects}
        assert distinct_colours(e.image) == colours  # every object drawn, none hidden
        tok.encode(e.caption + e.question + e.answer)  # within the alphabet
        by_colour = {o[1]: o for o in e.objects}
        if e.qtype == "count":
            assert e.answer == str(len(e.objects))
        elif e.qtype == "colour":
            shape = re.fullmatch(r"what colour is the (\w+)\?", e.question).group(1)
            assert [o[1] for o in e.objects if o[0] == shape] == [e.answer]
        elif e.qtype == "shape":
            colour = re.fullmatch(r"what shape is the (\w+) one\?", e.question).group(1)
            assert by_colour[colour][0] == e.answer and e.answer in SHAPES
        elif e.qtype == "position":
            a, word, b = re.fullmatch(r"is the (\w+) one (left of|above) the (\w+) one\?",
                                      e.question).groups()
            axis = 2 if word == "above" else 3
            assert e.answer == ("yes" if by_colour[a][axis] < by_colour[b][axis] else "no")
            pixel = {c: np.argwhere(np.all(np.round(e.image * 255).astype(int) == COLOURS[c],
                                           -1)).mean(0)[axis - 2] for c in (a, b)}
            assert e.answer == ("yes" if pixel[a] < pixel[b] else "no")
        else:
            a, b = re.fullmatch(r"is the (\w+) one bigger than the (\w+) one\?",
                                e.question).groups()
            area = {c: np.all(np.round(e.image * 255).astype(int) == COLOURS[c], -1).sum()
                    for c in (a, b)}
            assert e.answer == ("yes" if area[a] > area[b] else "no")


def test_render_and_resize():
    image, objects = render_scene(np.random.default_rng(0), 28, 112, 6)
    assert image.shape == (28, 112, 3) and 1 <= len(objects) <= 6
    sq = resize_square(image, 56)
    assert sq.shape == (56, 56, 3) and 0.0 <= sq.min() and sq.max() <= 1.0


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="sides"):
        make_examples(2, 0, sides=(4,))
    with pytest.raises(ValueError, match="max_objects"):
        make_examples(2, 0, max_objects=7)
    with pytest.raises(ValueError, match="side"):
        resize_square(np.zeros((8, 8, 3)), 0)
