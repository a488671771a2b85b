"""A byte-level tokenizer that needs no downloads (shared by the DPO and MoE language models).

Token ids ``0, 1, 2`` are the specials ``<pad>``, ``<bos>``, ``<eos>``; the remaining
ids are bytes. With no ``alphabet`` every byte value is a token (vocabulary 259, any
UTF-8 text round-trips); with an ``alphabet`` only its bytes are tokens (a vocabulary
of a few dozen for toy tasks) and other bytes are an error.

Example:
    >>> tok = ByteTokenizer("abc")
    >>> tok.encode("cab", bos=True)
    [1, 5, 3, 4]
    >>> tok.decode([1, 5, 3, 4])
    'cab'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ByteTokenizer"]


class ByteTokenizer:
    """Bytes ↔ token ids, with padding to ``[B, T]`` batches.

    Args:
      alphabet: the characters that are tokens (their UTF-8 bytes, in order, without
        duplicates), or None for all 256 byte values.

    Attributes:
      pad_id, bos_id, eos_id: the special ids 0, 1, 2.
      vocab_size: ``3 + number of byte tokens``.
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    num_special = 3

    def __init__(self, alphabet: str | None = None):
        if alphabet is None:
            symbols = list(range(256))
        else:
            symbols = list(alphabet.encode("utf-8"))
            if not symbols:
                raise ValueError("alphabet must contain at least one character")
            if len(set(symbols)) != len(symbols):
                raise ValueError(f"alphabet has repeated bytes: {alphabet!r}")
        self.alphabet = alphabet
        self._byte_to_id = np.full(256, -1, np.int64)
        self._byte_to_id[symbols] = np.arange(len(symbols)) + self.num_special
        self._id_to_byte = np.array(symbols, np.int64)
        self.vocab_size = self.num_special + len(symbols)

    def token_id(self, char: str) -> int:
        """The id of a one-byte character."""
        data = char.encode("utf-8")
        if len(data) != 1 or self._byte_to_id[data[0]] < 0:
            raise ValueError(f"{char!r} is not a single token of this tokenizer")
        return int(self._byte_to_id[data[0]])

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text`` (optionally with ``<bos>`` first and ``<eos>`` last)."""
        data = np.frombuffer(text.encode("utf-8"), np.uint8)
        ids = self._byte_to_id[data]
        if np.any(ids < 0):
            bad = sorted({chr(b) if b < 128 else f"\\x{b:02x}" for b in data[ids < 0]})
            raise ValueError(f"text contains bytes outside the alphabet: {bad}")
        out = ids.tolist()
        return ([self.bos_id] if bos else []) + out + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int] | np.ndarray, *, stop_at_eos: bool = True) -> str:
        """Text of ``ids``, skipping ``<pad>``/``<bos>`` and stopping at ``<eos>``."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == self.eos_id and stop_at_eos:
                break
            if i < self.num_special:
                continue
            if i >= self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary of {self.vocab_size}")
            out.append(int(self._id_to_byte[i - self.num_special]))
        return bytes(out).decode("utf-8", errors="replace")

    def encode_batch(self, texts: Sequence[str], *, length: int | None = None,
                     bos: bool = False, eos: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ``ids [B, T]`` (int32) and ``lengths [B]`` of several texts.

        ``T = length`` or the longest encoding; a longer text is an error.
        """
        encoded = [self.encode(t, bos=bos, eos=eos) for t in texts]
        lengths = np.array([len(e) for e in encoded], np.int32)
        T = int(lengths.max(initial=0)) if length is None else int(length)
        if lengths.size and lengths.max() > T:
            raise ValueError(f"a text encodes to {int(lengths.max())} tokens, more than "
                             f"length={T}")
        ids = np.full((len(texts), T), self.pad_id, np.int32)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = e
        return ids, lengths

    def __repr__(self) -> str:
        return f"ByteTokenizer(alphabet={self.alphabet!r}, vocab_size={self.vocab_size})"
