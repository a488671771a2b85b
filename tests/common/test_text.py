"""common.text: the shared byte tokenizer on source text (UTF-8 round trip, padding)."""

import numpy as np
import pytest

from common.text import ByteTokenizer


def test_round_trip_of_source_text():
    tok = ByteTokenizer()
    text = 'def f(x):\n    """Return x² — ünïcode."""\n    return x\n'
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert len(ids) == len(text.encode("utf-8")) + 2
    assert tok.decode(ids) == text
    assert tok.vocab_size == 259 and max(ids) < tok.vocab_size
    batch, lengths = tok.encode_batch(["ab", "abcd"])
    np.testing.assert_array_equal(lengths, [2, 4])
    assert batch.shape == (2, 4) and batch[0, 2:].tolist() == [tok.pad_id] * 2


def test_bad_input():
    with pytest.raises(ValueError, match="alphabet"):
        ByteTokenizer("ab").encode("abc")
    with pytest.raises(ValueError, match="length"):
        ByteTokenizer().encode_batch(["abc"], length=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ByteTokenizer("ab").decode([9])
