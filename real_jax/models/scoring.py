"""The teacher-forced scoring pass: token log-probs of given sequences under the model.

`score_sequences` is one full forward (`Qwen3.__call__`) over prompt + CoT that returns the
token log-probs (chunked over time: never a [B, T, V] float32 array) and the logits at the
score position. Differentiable; the REAL loss differentiates through it, and the rollout uses
it without gradients to read the score distribution after each sampled CoT.

`score_candidates` is the same pass for scores of several tokens ("10" as "1" "0"): one pass
per path of the score tree, each score's exact log-probability read over its tokens.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from real_jax import sharding as shd
from real_jax.models import qwen3

Array = jax.Array

__all__ = ["ScoreOutput", "score_sequences", "CandidatePaths", "CandidateOutput",
           "score_candidates", "log_number_ends"]


class ScoreOutput(NamedTuple):
  """token_log_probs [B, T] f32; score_logits [B, V] f32; token_entropy [B, T] f32 or None
  (see `score_sequences`)."""
  token_log_probs: Array
  score_logits: Array
  token_entropy: Array | None = None


def _chunked_token_log_probs(model: qwen3.Qwen3, hidden: Array, targets: Array,
                             temperature: float, chunk: int,
                             with_entropy: bool = False) -> Array | tuple[Array, Array]:
  """log softmax(hidden[:, t] @ W^T / temperature)[targets[:, t]] -> [B, T], chunk by chunk;
  with_entropy: also the entropy of that softmax -> ([B, T], [B, T]) from the same logits.

  Only a [B, chunk, V] float32 block exists at a time, forward and backward (each chunk is
  rematerialised in the backward pass instead of saving its logits).
  """
  b, t, d = hidden.shape
  nc, c = _chunking(t, chunk)
  pad = nc * c - t
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, nc, c, d).swapaxes(0, 1)
  y = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, nc, c).swapaxes(0, 1)
  w = model.output_embedding()  # [V, D], compute dtype

  @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
  def one(w, hc, yc):
    logits = jnp.einsum("BCD,VD->BCV", hc, w, preferred_element_type=jnp.float32)
    if temperature != 1.0:
      logits = logits / temperature
    logits = shd.constrain(logits, ("batch", "length", "act_vocab"))
    lse = jax.nn.logsumexp(logits, axis=-1)
    chosen = jnp.take_along_axis(logits, yc[..., None], axis=-1)[..., 0]
    if not with_entropy:
      return chosen - lse
    # H = lse - sum_v p_v * logit_v (no second [B, c, V] log-softmax array).
    p = jnp.exp(logits - lse[..., None])
    return chosen - lse, lse - jnp.sum(p * logits, axis=-1)

  out = jax.lax.map(lambda xs: one(w, *xs), (h, y))  # [nc, B, c] (a pair with the entropy)
  unchunk = lambda a: a.swapaxes(0, 1).reshape(b, nc * c)[:, :t]
  return jax.tree.map(unchunk, out)


def _chunking(t: int, chunk: int) -> tuple[int, int]:
  """(chunks, columns per chunk) of `_chunked_token_log_probs` over t columns."""
  nc = -(-t // max(1, chunk))  # as few chunks as `chunk` allows, of even width (little padding)
  return nc, -(-t // nc)


def _first_scored(t: int, response_width: int) -> int:
  """The first column whose token log-prob `score_sequences` computes."""
  return min(max(t - response_width if response_width else 1, 1), t - 1)


def output_columns(seq_len: int, response_width: int = 0, chunk_size: int = 64) -> int:
  """Columns per row on which `score_sequences` runs the output projection: the token log-prob
  columns padded to whole chunks, plus the score position (FLOP counts of the benchmarks)."""
  t = seq_len - _first_scored(seq_len, response_width)
  nc, c = _chunking(t, chunk_size)
  return nc * c + 1


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("temperature", "chunk_size", "response_width",
                                    "with_entropy"))
def _score_jit(graphdef, params, tokens, mask, score_positions, segment_ids, *,
               temperature: float, chunk_size: int, response_width: int,
               with_entropy: bool) -> ScoreOutput:
  model = nnx.merge(graphdef, params)
  mask = mask.astype(bool)
  if segment_ids is None:
    positions = qwen3.positions_from_mask(mask)
  else:
    positions = qwen3.positions_from_segments(segment_ids)
  hidden, _ = model(tokens, positions, mask, segment_ids=segment_ids)  # [B, T, D]
  b = tokens.shape[0]
  # One score position per row [B] (logits [B, V]) or per packed segment [B, S] ([B, S, V]).
  idx = score_positions.astype(jnp.int32).reshape(b, -1)[..., None]
  score_logits = model.logits(jnp.take_along_axis(hidden, idx, axis=1))
  score_logits = score_logits.reshape(*score_positions.shape, score_logits.shape[-1])
  t = tokens.shape[1]
  s = _first_scored(t, response_width)
  out = _chunked_token_log_probs(model, hidden[:, s - 1:-1], tokens[:, s:].astype(jnp.int32),
                                 temperature, chunk_size, with_entropy)
  real = mask[:, s:] & mask[:, s - 1:-1]
  if segment_ids is not None:  # a segment's first token is not predicted by the one before
    real = real & (segment_ids[:, s:] == segment_ids[:, s - 1:-1])
  head = jnp.zeros((b, s), jnp.float32)
  expand = lambda a: jnp.concatenate([head, jnp.where(real, a, 0.0)], axis=1)
  if with_entropy:
    lp, ent = out
    return ScoreOutput(token_log_probs=expand(lp), score_logits=score_logits,
                       token_entropy=expand(ent))
  return ScoreOutput(token_log_probs=expand(out), score_logits=score_logits)


def score_sequences(graphdef: nnx.GraphDef, params: nnx.State, tokens: Array, mask: Array,
                    score_positions: Array, *, temperature: float = 1.0,
                    chunk_size: int = 64, response_width: int = 0,
                    with_entropy: bool = False, segment_ids: Array | None = None
                    ) -> ScoreOutput:
  """Teacher-forced forward over prompt + CoT; differentiable w.r.t. params.

  Args:
    tokens: [B, T] int, left-padded prompt followed by the CoT (right padding allowed after it).
    mask: [B, T] bool, real tokens; RoPE positions come from it (0 at the first real token).
    score_positions: [B] int, the position whose logits predict the score token, i.e. the
      position of the last delimiter token (the score token would sit at score_positions + 1);
      [B, S] for packed rows (one per segment slot; score_logits is then [B, S, V]).
    temperature: divides the logits of `token_log_probs` (not of `score_logits`).
    chunk_size: time steps per logits block; memory is O(B * chunk_size * V), not O(B * T * V).
    response_width: static; > 0: token log-probs only on the last `response_width` columns
      (0 before them, not computed: the output projection runs over those columns only). The
      RL losses and the rollout's scoring pass use the responses' columns of
      `readout.build_sequences` (every prompt sits before them): the prompts' log-probs are
      never used there, and they are most of the tokens.
    with_entropy: static; also the entropy of each scored column's distribution (at
      `temperature`), from the same chunked logits (the rollout's policy-entropy metric).
    segment_ids: [B, T] int, packed rows (several records per row, 0 on padding): attention
      stays within a segment, RoPE positions restart at each segment's first column, and a
      segment's first token gets no log-prob (nothing in its segment predicts it).

  Returns:
    ScoreOutput(token_log_probs [B, T]: entry t = log softmax(logits[t - 1] / temperature)
      [tokens[t]] where mask[t] and mask[t - 1], else 0 (so 0 at t = 0, at padding and at a
      row's first real token); score_logits [B, V] float32: the raw (untempered) logits at
      score_positions; token_entropy [B, T] with_entropy: entry t = the entropy of the
      distribution that token_log_probs[t] reads, 0 where token_log_probs is 0; else None).
  Callable inside an outer jit/grad (e.g. the trainer's loss); then the outer trace applies.
  """
  return _score_jit(graphdef, params, tokens, mask, score_positions, segment_ids,
                    temperature=float(temperature), chunk_size=int(chunk_size),
                    response_width=int(response_width), with_entropy=bool(with_entropy))


class CandidatePaths(NamedTuple):
  """The score tree of a scale whose scores are several tokens (static, hashable).

  paths: the token sequences teacher-forced after the delimiter, one pass each (the scores
    that are no prefix of another); where: per score k, (path index, number of tokens);
    continuation_ids: the tokens that continue a number (the digits).
  """
  paths: tuple[tuple[int, ...], ...]
  where: tuple[tuple[int, int], ...]
  continuation_ids: tuple[int, ...]

  @classmethod
  def of(cls, score_tokens) -> "CandidatePaths":
    """From a `judge.ScoreTokens` (its `paths` and `continuation_ids`)."""
    paths, where = score_tokens.paths
    return cls(tuple(map(tuple, paths)), tuple(map(tuple, where)),
               tuple(int(t) for t in score_tokens.continuation_ids))


class CandidateOutput(NamedTuple):
  """token_log_probs [B, T] f32 (as `score_sequences`', exact at columns <= score position);
  score_log_probs [B, K] f32: log pi(score k | prompt, CoT) over the full vocabulary;
  token_entropy [B, T] f32 or None (as `score_sequences`')."""
  token_log_probs: Array
  score_log_probs: Array
  token_entropy: Array | None = None


def log_number_ends(logp: Array, continuation_ids: tuple[int, ...]) -> Array:
  """log(1 - sum_d p(d)) over the continuation tokens d: [..., V] log-probs -> [...], as the
  log-mass of every other token (a logsumexp, not 1 minus a sum), so it stays exact, and its
  gradient alive, where a digit follows almost surely."""
  is_cont = jnp.zeros(logp.shape[-1], bool).at[jnp.asarray(continuation_ids, jnp.int32)].set(True)
  return jax.nn.logsumexp(jnp.where(is_cont, -jnp.inf, logp), axis=-1)


def score_candidates(graphdef: nnx.GraphDef, params: nnx.State, tokens: Array, mask: Array,
                     score_positions: Array, candidates: CandidatePaths, *,
                     response_width: int = 0, chunk_size: int = 64,
                     with_entropy: bool = False) -> CandidateOutput:
  """Each score's exact probability when scores are several tokens; differentiable.

  A score's probability is that of its tokens after the delimiter followed by a token that
  ends the number, i.e. any token but a continuation (a digit): on 1-10 with split digits,
  pi("1") = p("1") * (1 - p(digit | "1")), so the "1" that starts "10" (or "17") is not a 1.
  Mass on continuations that are no score ("17", a word) counts for no score, as the
  full-vocabulary readout does on one-token scales. Teacher-forced, one `score_sequences` pass
  per path of the score tree with the path written after `score_positions` (whatever the row
  held there is ignored), every position of the path read in that pass.

  Args:
    tokens, mask: [B, T] as `score_sequences` (no packed rows).
    score_positions: [B] int, the last delimiter token of each row.
    candidates: the scale's `CandidatePaths` (static).
    response_width, with_entropy: as `score_sequences` (response_width: the last columns of
      the original rows).

  Returns:
    CandidateOutput(token_log_probs [B, T]: the first path's pass, equal to the row's own
      log-probs at every column <= score_positions (causal attention; later columns hold the
      path), score_log_probs [B, K] in the order of the scale's scores).
  """
  depth = max(len(p) for p in candidates.paths)
  b, t = tokens.shape
  pos = score_positions.astype(jnp.int32)[:, None]
  off = jnp.arange(t + depth)[None, :] - pos - 1  # [B, T + depth]: column's place in the path
  tokens = jnp.pad(tokens, ((0, 0), (0, depth)))
  prefix_mask = jnp.pad(mask.astype(bool), ((0, 0), (0, depth))) & (off < 0)
  first, per_path = None, []
  for path in candidates.paths:
    n = len(path)
    ids = jnp.asarray(path, jnp.int32)
    on_path = (off >= 0) & (off < n)
    toks = jnp.where(on_path, ids[jnp.clip(off, 0, n - 1)], tokens)
    # Logits at the delimiter and after each of the path's tokens.
    read_at = pos + jnp.arange(n + 1)[None, :]
    out = score_sequences(graphdef, params, toks, prefix_mask | on_path, read_at,
                          response_width=response_width + depth if response_width else 0,
                          chunk_size=chunk_size, with_entropy=with_entropy and first is None)
    first = out if first is None else first
    logp = jax.nn.log_softmax(out.score_logits.astype(jnp.float32), axis=-1)  # [B, n + 1, V]
    step = jnp.take_along_axis(logp[:, :n], ids[None, :, None], axis=-1)[..., 0]  # [B, n]
    prefix = jnp.concatenate([jnp.zeros((b, 1), jnp.float32), jnp.cumsum(step, axis=1)], 1)
    per_path.append(prefix + log_number_ends(logp, candidates.continuation_ids))
  score_lp = jnp.stack([per_path[p][:, m] for p, m in candidates.where], axis=1)
  cut = lambda a: None if a is None else a[:, :t]
  return CandidateOutput(token_log_probs=cut(first.token_log_probs), score_log_probs=score_lp,
                         token_entropy=cut(first.token_entropy))
