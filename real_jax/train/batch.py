"""The typed batches between the data/rollout code and the train step (like Tunix's
`TrainExample`): pytrees of host numpy arrays that `sharding.put_batch` places on the mesh and
`steps.make_train_step` consumes. All batch-major; L = sequence length (prompt ⊕ response),
positions index the concatenated sequence, padding is left for prompts and right for responses.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import struct

from real_jax import layout

__all__ = ["LMBatch", "RLBatch"]


@struct.dataclass
class LMBatch:
  """A teacher-forced batch of the supervised stages (warm-up SFT, RAFT, TRACT, pretraining).

  tokens [B,L] int32; mask [B,L] bool (padding only); loss_mask [B,L] f32 (positions whose
  token is trained by cross-entropy); score_pos [B] int32 (the hidden position that predicts the
  score token); target [B] f32 (the label y*); target_id [B] int32 (its score token);
  sample_mask [B] f32 (rows that count; 0 for padding rows).

  Packed (`train/packing.pack_lm_batch`): segment_ids [B,L] int32 numbers the records of each
  row 1, 2, ... (0 on padding) and the per-record fields are [B,S], one slot per segment
  (slot j is segment j + 1; sample_mask 0 on empty slots). Unpacked: segment_ids is None.
  """
  tokens: Any
  mask: Any
  loss_mask: Any
  score_pos: Any
  target: Any
  target_id: Any
  sample_mask: Any
  segment_ids: Any = None

  @property
  def row_mask(self) -> Any:
    """[B]: rows whose tokens count (sample_mask itself unless packed: rows with a record)."""
    if self.segment_ids is None:
      return self.sample_mask
    return self.sample_mask.max(axis=-1)


@struct.dataclass
class RLBatch:
  """One row per sampled CoT of a rollout (REAL and standard RL), rows grouped by prompt.

  tokens [B,L] int32, mask [B,L] bool, score_pos [B] int32 (the last delimiter token);
  cot_mask [B,L] f32 (the CoT tokens, delimiter included; for standard RL also the sampled
  score token); old_lp [B,L] and ref_lp [B,L] f32 (rollout-policy and reference token
  log-probs; zeros when unused); target [B] f32, target_id [B] int32; adv [B] f32 (the group
  advantage); pg_keep [B] and refine_keep [B] f32 (rows in the policy-gradient term / in the
  refinement term: those that reached the delimiter).
  """
  tokens: Any
  mask: Any
  score_pos: Any
  cot_mask: Any
  old_lp: Any
  ref_lp: Any
  target: Any
  target_id: Any
  adv: Any
  pg_keep: Any
  refine_keep: Any

  @property
  def num_rows(self) -> int:
    return int(self.tokens.shape[0])

  def take(self, idx) -> "RLBatch":
    """The rows `idx` (indices or a boolean mask)."""
    return jax.tree.map(lambda v: v[idx], self)

  def widen(self, width: int) -> "RLBatch":
    """Left-pads every sequence field to `width` columns (score positions shift with them)."""
    shift = width - self.tokens.shape[1]
    if shift <= 0:
      return self
    w = lambda a, value=0: layout.widen_left(a, width, value)
    return self.replace(tokens=w(self.tokens), mask=w(self.mask, False), cot_mask=w(self.cot_mask),
                        old_lp=w(self.old_lp), ref_lp=w(self.ref_lp),
                        score_pos=self.score_pos + shift)

  def pad_rows(self, rows: int) -> "RLBatch":
    """Padded to `rows` rows with copies of the first row that weigh zero in every term (static
    shapes for a short batch)."""
    have = self.num_rows
    if have >= rows:
      return self
    out = jax.tree.map(lambda v: np.concatenate([v, np.repeat(v[:1], rows - have, 0)]), self)
    out.pg_keep[have:] = 0.0
    out.refine_keep[have:] = 0.0
    return out

  @staticmethod
  def concat(parts: list["RLBatch"]) -> "RLBatch":
    """Rows of `parts` in order, sequences left-padded to the widest part."""
    width = max(p.tokens.shape[1] for p in parts)
    parts = [p.widen(width) for p in parts]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
