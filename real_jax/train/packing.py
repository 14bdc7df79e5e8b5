"""Packing of teacher-forced batches (several records per row, in fewer rows) and token-budget
micro-batches of the RL update (rows grouped by length, each group as narrow as it can be).

  packed, placement = pack_lm_batch(batch, PackSpec(row_multiple=8, max_segments=16))

A padded `LMBatch` holds one record per row, each left-padded prompt followed by its
right-padded target, so every row is as wide as the batch's widest record. Packing lays the
same records end to end (MaxText's and Tunix's layout): `segment_ids` numbers the records of
a row 1, 2, ... with 0 on padding, attention stays within a segment, RoPE positions restart
at each segment's first column (`models.qwen3.positions_from_segments`) and the per-record
fields (score position, target, its token, sample mask) become [rows, max_segments] slots.
The losses of `train/steps.py` read either layout; their denominators count the same tokens
and records, so a packed batch gives the same loss and gradient as the padded one up to float
summation order (tests/test_packing.py).

Placement is first-fit decreasing by length (ties in batch order), at most `max_segments`
records per row. The row count is rounded up to `row_multiple` times a power of two (and never
beyond the padded batch's rows), so a stage compiles at most
`len(widths) * (floor(log2(rows / row_multiple)) + 2)` step shapes, where the widths are those
the padded batcher makes (or the one `width`). `row_multiple` is the mesh's batch split times
the micro-batches per step, so the rows divide like the padded batch's.

Token budgets (`rl.token_budget`, verl's dynamic batch size): an RL mini-batch is
[rows, prompt width + response width] with the response region as wide as the longest allowed
CoT, every prompt left-padded to the longest. `budget_micro_batches` sorts its rows by length,
longest first, and cuts them into micro-batches: each takes the next rows, its prompt and
response regions cut to the smallest of `widths` that hold its longest prompt and its longest
response, with as many rows as `tokens` allows at that width (a multiple of `row_multiple`;
short groups are filled with zero-weight rows). One micro-batch shape per (prompt width,
response width) pair: a prompt region is one of `widths` below the update's prompt width or
that width itself (one of the prompt buckets), so a run compiles at most
(len(widths) + len(prompt buckets)) x len(widths) gradient functions. A micro-batch of narrow
rows holds more of them (tokens // width): the output projection's block
[rows, logit chunk, vocabulary] grows with the rows, so size the budget for the vocabulary. With the
full mini-batch's denominators (`steps.AccumulatingStep`) the update is the fixed micro-batch
update, up to float summation order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from real_jax import layout
from real_jax.train.batch import LMBatch, RLBatch

__all__ = ["PackSpec", "record_lengths", "pack_lm_batch", "segment_sums", "TokenBudget",
    "budget_micro_batches"]


@dataclasses.dataclass(frozen=True)
class PackSpec:
  """How to pack: `width` 0 keeps the padded batch's width; `row_multiple` divides the rows;
  `max_segments` records per row at most (the [rows, S] per-record slots)."""
  width: int = 0
  row_multiple: int = 1
  max_segments: int = 16

  def __post_init__(self):
    if self.width < 0 or self.row_multiple < 1 or self.max_segments < 1:
      raise ValueError(f"bad PackSpec {self}: width >= 0, row_multiple >= 1, max_segments >= 1")


def record_lengths(batch: LMBatch) -> np.ndarray:
  """[B] real tokens of each row of a padded batch (0 for padding rows)."""
  return np.where(np.asarray(batch.sample_mask) > 0, np.asarray(batch.mask).sum(axis=1), 0)


def _first_fit_decreasing(lengths: np.ndarray, width: int, max_segments: int) -> list[list[int]]:
  """Rows of record indices: longest first, each into the first row with room."""
  rows: list[list[int]] = []
  free: list[int] = []
  for i in sorted(np.flatnonzero(lengths > 0), key=lambda i: (-lengths[i], i)):
    n = int(lengths[i])
    for r, room in enumerate(free):
      if n <= room and len(rows[r]) < max_segments:
        rows[r].append(int(i))
        free[r] -= n
        break
    else:
      rows.append([int(i)])
      free.append(width - n)
  return rows


def _row_count(needed: int, multiple: int, limit: int) -> int:
  """`multiple` times the smallest power of two that holds `needed` rows, at most `limit`."""
  k = 1
  while k * multiple < needed:
    k *= 2
  return max(min(k * multiple, limit), needed)


def pack_lm_batch(batch: LMBatch, spec: PackSpec) -> tuple[LMBatch, np.ndarray]:
  """Packs a padded host `LMBatch` (see the module docstring).

  Returns (the packed batch, placement [B, 2] int32: the (row, slot) of each input row's record,
  (-1, -1) for padding rows). Raises ValueError when a record is wider than `spec.width` or a
  row's real tokens are not contiguous (not a padded judge batch).
  """
  tokens, mask = np.asarray(batch.tokens), np.asarray(batch.mask).astype(bool)
  b, width = tokens.shape[0], spec.width or tokens.shape[1]
  lengths = record_lengths(batch)
  if lengths.max(initial=0) > width:
    raise ValueError(f"a record of {int(lengths.max())} tokens does not fit packed rows of "
                     f"{width}: raise data.pack_length to at least data.max_prompt_len + "
                     f"data.max_target_len, or set it to 0 (the padded batch's width)")
  layout = _first_fit_decreasing(lengths, width, spec.max_segments)
  rows = _row_count(len(layout), spec.row_multiple, max(b, spec.row_multiple))
  s = spec.max_segments
  out_tokens = np.zeros((rows, width), tokens.dtype)
  seg = np.zeros((rows, width), np.int32)
  loss_mask = np.zeros((rows, width), np.asarray(batch.loss_mask).dtype)
  per_record = {name: np.zeros((rows, s), np.asarray(getattr(batch, name)).dtype)
                for name in ("score_pos", "target", "target_id", "sample_mask")}
  placement = np.full((b, 2), -1, np.int32)
  for r, members in enumerate(layout):
    col = 0
    for j, i in enumerate(members):
      cols = np.flatnonzero(mask[i])
      n = len(cols)
      if cols[-1] - cols[0] + 1 != n:
        raise ValueError(f"row {i} has non-contiguous tokens; pack_lm_batch packs padded judge "
                         "batches (left-padded prompt then right-padded target)")
      out_tokens[r, col:col + n] = tokens[i, cols]
      seg[r, col:col + n] = j + 1
      loss_mask[r, col:col + n] = np.asarray(batch.loss_mask)[i, cols]
      per_record["score_pos"][r, j] = col + int(batch.score_pos[i]) - cols[0]
      for name in ("target", "target_id", "sample_mask"):
        per_record[name][r, j] = np.asarray(getattr(batch, name))[i]
      placement[i] = (r, j)
      col += n
  packed = LMBatch(tokens=out_tokens, mask=seg > 0, loss_mask=loss_mask, segment_ids=seg,
                   **per_record)
  return packed, placement


def segment_sums(values: np.ndarray, segment_ids: np.ndarray, max_segments: int) -> np.ndarray:
  """[B, L] per-token values -> [B, S] sums over each segment (slot j: segment j + 1)."""
  values, segment_ids = np.asarray(values), np.asarray(segment_ids)
  onehot = segment_ids[..., None] == np.arange(1, max_segments + 1)
  return np.einsum("bl,bls->bs", values, onehot.astype(values.dtype))


@dataclasses.dataclass(frozen=True)
class TokenBudget:
  """`tokens`: rows x columns of a micro-batch at most (at least one row group fits);
  `widths`: the allowed widths of the prompt and of the response region, ascending (a region
  is never cut narrower than its rows need, and never wider than it is);
  `row_multiple`: micro-batch rows divide by it (the mesh's batch split)."""
  tokens: int
  widths: tuple[int, ...]
  row_multiple: int = 1


def _needed_columns(batch: RLBatch, prompt_width: int) -> tuple[np.ndarray, np.ndarray]:
  """([B] prompt columns, [B] response columns) each row needs: from its first real token, and
  through its last real token and its score slot."""
  mask = np.asarray(batch.mask).astype(bool)
  first = np.argmax(mask, axis=1)
  last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
  last = np.maximum(last, np.asarray(batch.score_pos) + 1)
  return np.maximum(prompt_width - first, 1), np.maximum(last + 1 - prompt_width, 1)


def budget_micro_batches(batch: RLBatch, prompt_width: int, budget: TokenBudget
                         ) -> list[tuple[int, RLBatch]]:
  """The rows of `batch` that count (pg_keep or refine_keep), as (response width, micro-batch)
  pairs under `budget` (see the module docstring). `prompt_width`: the columns before the
  response region (every row's prompt is left-padded to it); a micro-batch keeps the smallest
  of `widths` (below `prompt_width`, or all of it) that holds its longest prompt, and the
  smallest response width that holds its longest response."""
  keep = (np.asarray(batch.pg_keep) > 0) | (np.asarray(batch.refine_keep) > 0)
  need_p, need_r = _needed_columns(batch, prompt_width)
  full = batch.tokens.shape[1] - prompt_width
  fit = lambda n, top: layout.bucket_length(n, tuple(w for w in budget.widths if w < top) + (top,))
  order = [int(i) for i in sorted(np.flatnonzero(keep),
                                  key=lambda i: (-(need_p[i] + need_r[i]), i))]
  out = []
  while order:
    rows, pw, rw = 0, 1, 1
    while True:  # widths only grow and rows only shrink: this ends
      take = order[:max(rows, 1)]
      pw = max(pw, fit(int(need_p[take].max()), prompt_width))
      rw = max(rw, fit(int(need_r[take].max()), full))
      fits = max(budget.tokens // (pw + rw) // budget.row_multiple, 1) * budget.row_multiple
      if fits == rows:
        break
      rows = fits
    take, order = order[:rows], order[rows:]
    mb = batch.take(np.asarray(take)).pad_rows(rows)  # filler rows weigh zero
    lo, hi = prompt_width - pw, prompt_width + rw
    real = np.asarray(mb.mask).astype(bool)
    if real[:, :lo].any() or real[:, hi:].any():
      raise ValueError(f"a row has tokens outside columns [{lo}, {hi}): prompt_width "
                       f"{prompt_width} is not this batch's prompt region")
    cut = lambda a: a[:, lo:hi]
    out.append((rw, mb.replace(tokens=cut(mb.tokens), mask=cut(mb.mask),
                               cot_mask=cut(mb.cot_mask), old_lp=cut(mb.old_lp),
                               ref_lp=cut(mb.ref_lp), score_pos=mb.score_pos - lo)))
  return out
