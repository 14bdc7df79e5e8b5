"""Packed supervised batches give the padded batch's per-record losses and gradients.

Tolerance (float32 on CPU): per-record losses and y_hat within 2e-5 absolute, gradients within
rtol 2e-4 / atol 2e-6 (the order of the attention and loss sums differs, nothing else).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from real_jax import sharding as shd
from real_jax.judge.scores import ScoreTokens
from real_jax.models import get_preset, init_params, qwen3, score_sequences
from real_jax.train import packing
from real_jax.train import state as state_lib
from real_jax.train import steps as steps_lib
from real_jax.train.supervised import lm_batch, raft_batch

CFG = get_preset("tiny").model
ST = ScoreTokens(token_ids=(11, 12, 13, 14, 15), values=(1.0, 2.0, 3.0, 4.0, 5.0),
                 delimiter_ids=(20, 21, 22), eos_id=1)
B, LP, LC = 8, 24, 16


def _judge_batch(seed=0, padding_rows=1):
  """A JudgeBatcher-like batch: ragged left-padded prompts, ragged right-padded targets that end
  with delimiter, score token and EOS; the last `padding_rows` rows are padding."""
  rng = np.random.default_rng(seed)
  pt, pm = np.zeros((B, LP), np.int32), np.zeros((B, LP), np.int32)
  ct, cm = np.zeros((B, LC), np.int32), np.zeros((B, LC), np.int32)
  target = rng.integers(1, 6, size=B).astype(np.float32)
  valid = np.ones(B, np.int32)
  valid[B - padding_rows:] = 0
  for i in range(B - padding_rows):
    p = LP if i == 0 else int(rng.integers(3, 11))  # one long record, the rest short: ragged
    pt[i, LP - p:], pm[i, LP - p:] = rng.integers(30, 256, size=p), 1
    c = LC - 5 if i == 0 else int(rng.integers(1, 6))
    body = list(rng.integers(30, 256, size=c)) + list(ST.delimiter_ids)
    body += [ST.token_ids[int(target[i]) - 1], ST.eos_id]
    ct[i, :len(body)], cm[i, :len(body)] = body, 1
  return {"prompt_tokens": pt, "prompt_mask": pm, "completion_tokens": ct,
          "completion_mask": cm, "target": target, "valid": valid}


def _padded(kind, seed=0):
  b = _judge_batch(seed)
  tid = np.where(b["valid"] > 0, b["target"].astype(np.int32) + 10, 11)
  if kind == "raft":
    return raft_batch(b, ST.delimiter_ids, tid)
  return lm_batch(b, "sft" if kind == "sft" else "tract", tid)


def _loss(kind):
  if kind == "sft":
    return steps_lib.sft_objective()
  if kind == "raft":
    return steps_lib.raft_objective(ST)
  return steps_lib.cot_raft_objective(ST, lam=0.7)


def _per_record(graphdef, params, batch, placement=None, s=None):
  """Per input row: (CE sum over its loss tokens, its score-position logits)."""
  j = lambda a: None if a is None else jnp.asarray(a)
  out = score_sequences(graphdef, params, j(batch.tokens), j(batch.mask), j(batch.score_pos),
                        segment_ids=j(batch.segment_ids))
  nll = -np.asarray(out.token_log_probs) * np.asarray(batch.loss_mask)
  logits = np.asarray(out.score_logits)
  if placement is None:
    return nll.sum(axis=1), logits
  sums = packing.segment_sums(nll, batch.segment_ids, s)
  keep = placement[:, 0] >= 0
  r, k = placement[keep, 0], placement[keep, 1]
  ce = np.zeros(len(placement), np.float32)
  ce[keep] = sums[r, k]
  got = np.zeros((len(placement), logits.shape[-1]), np.float32)
  got[keep] = logits[r, k]
  return ce, got


def _model(chunk):
  mesh = shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
  graphdef, params = init_params(CFG.replace(attention_chunk=chunk), mesh=mesh, seed=0)
  return mesh, graphdef, params


@pytest.fixture(scope="module")
def model():
  """Attention in one block (the widths here are < 512)."""
  return _model(512)


@pytest.fixture(scope="module")
def chunked_model():
  """attention_chunk 16 < the width: the query-chunked path and its custom VJP."""
  return _model(16)


def test_packing_layout_and_bounds():
  padded = _padded("tract")
  packed, placement = packing.pack_lm_batch(padded, packing.PackSpec(row_multiple=2,
                                                                     max_segments=4))
  lengths = packing.record_lengths(padded)
  assert packed.tokens.shape[1] == padded.tokens.shape[1]  # the padded batch's width
  assert packed.tokens.shape[0] % 2 == 0 and packed.tokens.shape[0] < padded.tokens.shape[0]
  assert int(packed.mask.sum()) == int(padded.mask.sum())  # every real token, once
  assert np.all((placement[:, 0] >= 0) == (padded.sample_mask > 0))
  assert float(packed.sample_mask.sum()) == float(padded.sample_mask.sum())
  for ids in packed.segment_ids:  # a row's records in order, padding only after them
    real = np.flatnonzero(ids > 0)
    assert np.all(np.diff(ids[real]) >= 0) and np.all(real == np.arange(len(real)))
  assert packed.segment_ids.max() <= 4
  pos = np.asarray(qwen3.positions_from_segments(jnp.asarray(packed.segment_ids)))
  for i in np.flatnonzero(padded.sample_mask):
    r, k = placement[i]
    cols = np.flatnonzero(packed.segment_ids[r] == k + 1)
    assert len(cols) == lengths[i] and np.all(np.diff(cols) == 1)  # contiguous
    np.testing.assert_array_equal(packed.tokens[r, cols], padded.tokens[i][padded.mask[i]])
    np.testing.assert_array_equal(pos[r, cols], np.arange(lengths[i]))  # RoPE restarts
    assert packed.tokens[r, packed.score_pos[r, k]] == padded.tokens[i, padded.score_pos[i]]
  with pytest.raises(ValueError, match="data.pack_length"):
    packing.pack_lm_batch(padded, packing.PackSpec(width=int(lengths.max()) - 1))


@pytest.mark.parametrize("kind", ["sft", "tract", "raft"])
def test_packed_batch_equals_padded_per_record_and_in_the_objective(model, kind):
  mesh, graphdef, params = model
  padded = _padded(kind)
  s = 4
  packed, placement = packing.pack_lm_batch(padded, packing.PackSpec(row_multiple=2,
                                                                     max_segments=s))
  assert packed.tokens.shape[0] < padded.tokens.shape[0]
  # Per record: the cross-entropy over its target tokens and its score-position logits.
  ce_pad, logit_pad = _per_record(graphdef, params, padded)
  ce_pack, logit_pack = _per_record(graphdef, params, packed, placement, s)
  keep = padded.sample_mask > 0
  if kind != "raft":
    assert np.all(ce_pad[keep] > 0)
  np.testing.assert_allclose(ce_pack[keep], ce_pad[keep], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(logit_pack[keep], logit_pad[keep], atol=2e-5, rtol=1e-5)

  # The objective's loss and gradient over the whole batch (full-batch denominators).
  loss = _loss(kind)

  @jax.jit
  def value_and_grad(params, batch):
    den = loss.denominators(batch)
    return jax.value_and_grad(lambda p: loss.fn(graphdef, p, batch, den), has_aux=True)(params)
  (l_pad, m_pad), g_pad = value_and_grad(params, padded)
  (l_pack, m_pack), g_pack = value_and_grad(params, packed)
  np.testing.assert_allclose(l_pack, l_pad, rtol=1e-5, atol=1e-6)
  for name in m_pad:
    np.testing.assert_allclose(m_pack[name], m_pad[name], rtol=1e-5, atol=1e-6, err_msg=name)
  _assert_same_grads(g_pack, g_pad)


def _assert_same_grads(got, want):
  assert float(optax.tree.norm(want)) > 0
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


def test_packed_train_step_equals_padded(chunked_model):
  """The trainer's step on a packed TRACT batch (CE + squared error, 2 micro-batches, SGD lr 1:
  the update is minus the gradient) equals the step on the padded batch."""
  mesh, graphdef, params = chunked_model
  padded = _padded("tract", seed=1)
  packed, _ = packing.pack_lm_batch(padded, packing.PackSpec(row_multiple=2, max_segments=4))
  loss, tx = _loss("tract"), optax.sgd(1.0)
  results = []
  for batch in (padded, packed):
    state, sh = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, mesh, 0)
    step = steps_lib.make_train_step(loss, graphdef, tx, mesh, sh, batch, num_micro=2)
    new, m = step(state, shd.put_batch(batch, mesh))
    grad = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), params, new["params"])
    results.append((m, grad))
  (m_pad, g_pad), (m_pack, g_pack) = results
  for name in ("loss", "ce", "mse", "y_hat_mean"):
    np.testing.assert_allclose(m_pack[name], m_pad[name], rtol=1e-5, atol=1e-6, err_msg=name)
  _assert_same_grads(g_pack, g_pad)


def test_segments_keep_records_apart(chunked_model):
  """Changing one record's tokens changes no other record's log-probs in a packed row."""
  _, graphdef, params = chunked_model
  packed, placement = packing.pack_lm_batch(_padded("sft"), packing.PackSpec(max_segments=4))
  r = int(np.argmax((packed.segment_ids > 0).max(axis=1) * packed.segment_ids.max(axis=1)))
  assert packed.segment_ids[r].max() >= 2
  other = packed.tokens.copy()
  cols = packed.segment_ids[r] == 1
  other[r, cols] = (other[r, cols] + 7) % 200 + 30
  lp = lambda t: np.asarray(score_sequences(
      graphdef, params, jnp.asarray(t), jnp.asarray(packed.mask),
      jnp.asarray(packed.score_pos), segment_ids=jnp.asarray(packed.segment_ids)).token_log_probs)
  a, b = lp(packed.tokens), lp(other)
  later = packed.segment_ids[r] >= 2
  np.testing.assert_allclose(a[r, later], b[r, later], atol=1e-6)
  assert not np.allclose(a[r, cols], b[r, cols])
  # A segment's first token is never scored from the previous segment's last one.
  firsts = np.flatnonzero(np.diff(packed.segment_ids[r]) != 0) + 1
  assert np.all(a[r, firsts] == 0)
