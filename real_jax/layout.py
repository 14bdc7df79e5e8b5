"""Sequence layout, the one version of each: left padding, bucket widths and RoPE positions.

Every batch in this project is batch-major and **left-padded** for prompts (the last prompt token
sits in the last column, so one decode step serves every row) and right-padded for responses.
The helpers here are plain array code (numpy on the host; `positions_from_mask` also traces
under jax), shared by the data pipeline, the model, the sampler and the trainer. This module
imports nothing from the project.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["positions_from_mask", "power_of_two_buckets", "bucket_length", "pad_rows", "left_pad",
    "right_pad", "widen_left"]


def positions_from_mask(mask):
  """[..., T] int32 RoPE positions of left-padded rows: cumsum(mask) - 1, 0 on the padding.

  Written with array methods so it serves numpy arrays on the host and jax arrays in traced
  code alike.
  """
  return (mask.astype("int32").cumsum(axis=-1, dtype="int32") - 1).clip(min=0)


def power_of_two_buckets(limit: int, smallest: int = 64) -> tuple[int, ...]:
  """The default prompt buckets: 64, 128, ... below `limit`, and `limit` itself."""
  b, x = [], smallest
  while x < limit:
    b.append(x)
    x *= 2
  return tuple(sorted(set(b + [int(limit)])))


def bucket_length(n: int, buckets: Sequence[int], *, overflow: str = "error") -> int:
  """Smallest bucket >= n. Beyond the largest: ValueError (`overflow="error"`) or the next
  multiple of the largest (`overflow="multiple"`, the sampler's rule for long prompts)."""
  for b in sorted(buckets):
    if n <= b:
      return int(b)
  if overflow == "multiple":
    top = max(buckets)
    return int(top * -(-n // top))
  raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}")


def pad_rows(seqs: Sequence[Sequence[int]], length: int, pad_id: int, *, side: str
             ) -> tuple[np.ndarray, np.ndarray]:
  """[len(seqs), length] int32 tokens padded with pad_id on `side` ("left" or "right"), and the
  0/1 int32 mask of the real tokens."""
  tokens = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    if len(s) > length:
      raise ValueError(f"sequence of length {len(s)} does not fit in {length}")
    cols = slice(length - len(s), length) if side == "left" else slice(0, len(s))
    if len(s):
      tokens[i, cols] = s
      mask[i, cols] = 1
  return tokens, mask


def left_pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Prompts: `pad_rows(..., side="left")`."""
  return pad_rows(seqs, length, pad_id, side="left")


def right_pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """Responses: `pad_rows(..., side="right")`."""
  return pad_rows(seqs, length, pad_id, side="right")


def widen_left(a: np.ndarray, width: int, value=0) -> np.ndarray:
  """[N, L, ...] -> [N, width, ...]: `width - L` columns of `value` added on the left (a no-op
  when L >= width). Keeps left-padded rows left-padded."""
  extra = width - a.shape[1]
  if extra <= 0:
    return a
  return np.pad(a, ((0, 0), (extra, 0)) + ((0, 0),) * (a.ndim - 2), constant_values=value)
