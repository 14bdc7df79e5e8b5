"""The REAL objective and its baselines as pure, jitted JAX functions.

No model, no I/O: every function takes arrays (log-probs, masks, logits at the score
position, targets) and returns arrays. Every public function is `jax.jit`-compiled with its
string/bool options static, works under `jax.vmap`, and accepts sharded inputs.

Method (the paper; docs/architecture.md draws the files around it). At the position that predicts the score token, the policy gives
`pi(k | x, c)` over the vocabulary; the RAIL expected score is `y_hat = sum_k v_k pi(k | x, c)`
over the score tokens `k` with values `v_k`. REAL maximises `J = E_c[-(y_hat - y*)^2]`, whose
gradient has two terms (generalized policy gradient):

  grad J = E[r * grad log pi(c | x)]      (explore: REINFORCE over CoT tokens)
         + E[grad r]                      (refine: back-propagate through y_hat)

`real_loss` is the minimised surrogate
  agg_CoT(-log pi(c_t) * stop_grad(A))
    + beta * mean[(y_hat - y*)^2 + lam * (-log pi(y* | x, c))].

When it is exact. With `aggregation="sequence-sum"` the first term is
`(1/B) sum_i sum_t -log pi(c_it) A_i`, the paper's `(1/n) sum_i [A_i grad log pi(c_i|x) + beta
grad r_i]`, and the expected gradient equals `-grad J` exactly, for CoTs of any (varying) lengths,
with: leave-one-out advantages (`estimator="rloo"`, `normalize=False`, `clip=None`); beta = 1;
the shaping reward consistent with the refinement term (`shaping="log_prob"` with
`shaping_weight = lam`, or `shaping="none"` with lam = 0), so that J = E[-(y_hat - y*)^2 +
lam * log pi(y*|x,c)]; every group kept (filter "all"); one on-policy step (one optimiser step
per rollout batch: after it the samples are off-policy, and no per-token ratio restores the
exact gradient); rollouts at temperature 1 without top-p / top-k; score logits at
temperature 1. tests/test_objectives.py checks this by exact enumeration of every group of a
tabular policy with CoTs of lengths 1-3, and tests/test_train.py through the trainer's step.

The other aggregations are biased estimators of `-grad J` when lengths vary:
  * "token-mean" (the authors' choice, and the default for reproduction) divides the CoT term by
    the number of CoT tokens N of the batch instead of the number of sequences B. Its gradient is
    exactly (1/L) x the "sequence-sum" gradient with beta_exact = beta * L, L = N / B the mean
    CoT length: beta under token-mean weighs refinement like beta * L does under the exact
    estimator (and the whole step is 1/L smaller). Within a batch the lengths also reweight
    sequences (a long CoT gets more weight), which no single beta undoes.
  * "sequence-mean" divides each sequence by its own length: biased whenever lengths vary.

Conventions
  * Shapes: `B` sequences, `T` CoT positions, `V` vocabulary, `K` score tokens, groups
    `[G, n]` (G prompts x n samples, contiguous in the flat batch: `B = G * n`).
  * `cot_log_probs[b, t] = log pi(c_t | x, c_<t)`, aligned with `cot_mask[b, t]` (the usual
    `[-R-1:-1]` shift, not the authors' off-by-one window).
  * `cot_mask` covers the sampled CoT tokens, delimiter phrase included, and NOT the score
    token: the score token is trained by the refinement term (lam * -log pi(y*)); leaving it
    in the policy-gradient term would reinforce the *sampled* digit with a regression advantage.
  * All arithmetic is float32 (float64 stays float64) even for bf16 logits; log-probs come from
    `logsumexp`/`log_softmax`, never `log(softmax)`.
  * Losses have a (sum, denominator) form (`real_loss_sums`, `denominator=` arguments) so that
    micro-batches accumulate to exactly the full-batch token mean.
  * Advantages are constants inside every loss (`stop_gradient`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from real_jax.registry import (  # re-exported: `obj.register_reward`, `obj.LOSSES`, ...
    ADVANTAGE_ESTIMATORS, GROUP_FILTERS, KL_ESTIMATORS, LOSSES, POLICY_LOSSES, REWARDS, SHAPINGS,
    register_advantage_estimator, register_group_filter, register_kl_estimator, register_loss,
    register_policy_loss, register_reward, register_shaping)

__all__ = ["AGGREGATIONS", "ScoreSpec", "masked_aggregate_sums", "masked_aggregate",
    "candidate_logits", "score_token_log_probs", "expected_score", "score_token_mass", "score_log_prob",
    "target_token_ids_for", "token_log_probs", "token_entropy", "regression_reward",
    "binary_reward", "group_advantages", "AdvantageRecipe", "ADVANTAGE_RECIPES",
    "describe_advantages",
    "worst_squared_error", "real_advantages", "partial_group_mask", "policy_gradient_loss",
    "kl_penalty", "entropy_bonus", "RealLossSums", "real_loss_denominators", "real_loss_sums",
    "real_loss_terms", "real_loss_from_sums", "real_loss", "sft_loss", "raft_loss", "cot_raft_loss",
    # the registries (real_jax.registry), re-exported
    "ADVANTAGE_ESTIMATORS", "GROUP_FILTERS", "KL_ESTIMATORS", "LOSSES", "POLICY_LOSSES",
    "REWARDS", "SHAPINGS", "register_advantage_estimator", "register_group_filter",
    "register_kl_estimator", "register_loss", "register_policy_loss", "register_reward",
    "register_shaping"]

Array = jax.Array
ArrayLike = Any

AGGREGATIONS = ("token-mean", "sequence-mean", "sequence-sum")


# ==============================================================================
# Registries (real_jax.registry, re-exported here): a trainer picks estimators and losses by
# config name; the decorators below fill them when this module is imported.
# ==============================================================================


class ScoreSpec(NamedTuple):
  """The score tokens as arrays, aligned: `ids [K]` int32 token ids and `values [K]` float32
  score values. `ScoreSpec.of(score_tokens)` reads a `judge.ScoreTokens`."""
  ids: Array
  values: Array

  @classmethod
  def of(cls, score_tokens) -> "ScoreSpec":
    if getattr(score_tokens, "multi_token", False):
      raise ValueError(f"scores {score_tokens.scale.spec} are more than one token each for this "
                       "tokenizer: no vocabulary logit is a score; read them with "
                       "models.score_candidates and use ScoreSpec.candidates")
    return cls(jnp.asarray(score_tokens.token_ids, jnp.int32),
               jnp.asarray(score_tokens.values, jnp.float32))

  @classmethod
  def read(cls, score_tokens) -> "ScoreSpec":
    """How the losses read a scale: `of` (its tokens' logits) when every score is one token,
    else `candidates` (the logits of `candidate_logits`)."""
    if getattr(score_tokens, "multi_token", False):
      return cls.candidates(score_tokens.values)
    return cls.of(score_tokens)

  @classmethod
  def candidates(cls, score_values: ArrayLike) -> "ScoreSpec":
    """The spec of `candidate_logits`: ids 0..K-1 index the K scores, the values as given."""
    values = jnp.asarray(score_values, jnp.float32)
    return cls(jnp.arange(values.shape[0], dtype=jnp.int32), values)


# ==============================================================================
# Small helpers
# ==============================================================================


def _float(x: ArrayLike) -> Array:
  """At least float32 (bf16/f16/int -> f32; f64 stays f64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_aggregation(aggregation: str):
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")


def _seq_weights(batch_shape, sample_mask, dtype) -> Array:
  if sample_mask is None:
    return jnp.ones(batch_shape, dtype)
  return jnp.asarray(sample_mask).astype(dtype)


def _safe_div(num: Array, den: ArrayLike) -> Array:
  den = jnp.asarray(den, num.dtype)
  return num / jnp.maximum(den, 1.0)  # counts; an empty batch gives 0, not NaN


def masked_aggregate_sums(
    values: ArrayLike,
    mask: ArrayLike,
    *,
    aggregation: str = "token-mean",
    sample_mask: ArrayLike | None = None,
) -> tuple[Array, Array]:
  """(sum, denominator) of per-token values.

  Args:
    values: `[B, T]` per-token values (masked positions may hold anything, even inf/NaN).
    mask: `[B, T]` 1 for tokens that count.
    aggregation: "token-mean": (sum over tokens, number of tokens). "sequence-mean":
      (sum over sequences of each sequence's token mean, number of sequences).
      "sequence-sum": (sum over tokens, number of sequences), i.e. each sequence's token sum,
      averaged over sequences (verl's "seq-mean-token-sum"; the exact policy-gradient form).
    sample_mask: optional `[B]`, 0 drops a whole sequence (and its count); fractional values
      weight the sequence (and its count).

  Returns:
    `(sum, denominator)`, scalars. `sum / max(denominator, 1)` is the mean; summing both over
    micro-batches and dividing once gives the exact full-batch mean.
  """
  _check_aggregation(aggregation)
  values = _float(values)
  seq_w = _seq_weights(values.shape[:-1], sample_mask, values.dtype)
  m = jnp.asarray(mask).astype(values.dtype) * seq_w[..., None]
  v = jnp.where(m > 0, values, 0.0)  # "double where": garbage under the mask never leaks
  if aggregation == "token-mean":
    return jnp.sum(v * m), jnp.sum(m)
  if aggregation == "sequence-sum":
    return jnp.sum(v * m), jnp.sum(seq_w)
  per_seq = _safe_div(jnp.sum(v * m, axis=-1), jnp.sum(m, axis=-1))
  return jnp.sum(per_seq * seq_w), jnp.sum(seq_w)


def masked_aggregate(
    values: ArrayLike,
    mask: ArrayLike,
    *,
    aggregation: str = "token-mean",
    sample_mask: ArrayLike | None = None,
    denominator: ArrayLike | None = None,
) -> Array:
  """Masked mean of `[B, T]` values (see `masked_aggregate_sums`).

  `denominator`: divide by this (e.g. the full batch's count) instead of the local one, so that
  the results of micro-batches add up to the full-batch mean.
  """
  s, d = masked_aggregate_sums(values, mask, aggregation=aggregation, sample_mask=sample_mask)
  return _safe_div(s, d if denominator is None else denominator)


# ==============================================================================
# Score-position quantities
# ==============================================================================


def _score_parts(score_logits, score_token_ids, temperature):
  """Returns (logits/T as float, logits at the score tokens [..., K], full logsumexp [...])."""
  logits = _float(score_logits) / temperature
  sel = jnp.take(logits, jnp.asarray(score_token_ids), axis=-1)
  return logits, sel, jax.nn.logsumexp(logits, axis=-1)


_NO_SCORE_FLOOR = 1e-30  # smallest mass `candidate_logits` gives to "no score"


@jax.custom_jvp
def _log_no_score(score_log_probs):
  return jnp.log(_no_score(score_log_probs))


def _no_score(score_log_probs):
  return jnp.maximum(1.0 - jnp.sum(jnp.exp(score_log_probs), axis=-1), _NO_SCORE_FLOOR)


@_log_no_score.defjvp
def _log_no_score_jvp(primals, tangents):
  (lp,), (dlp,) = primals, tangents
  rest = _no_score(lp)
  # d log(1 - S) = -dS / (1 - S), with the same (floored) 1 - S as the value: in the softmax
  # of `candidate_logits` this term cancels the scores' own share exactly.
  return jnp.log(rest), -jnp.sum(jnp.exp(lp) * dlp, axis=-1) / rest


@jax.jit
def candidate_logits(score_log_probs: ArrayLike) -> Array:
  """Logits over K + 1 outcomes (the K scores, then "no score") whose softmax is the scores'
  probabilities: `[..., K] -> [..., K + 1]`.

  For scales whose scores are several tokens ("10" as "1" "0"), `models.score_candidates`
  reads each score's exact full-vocabulary log-probability; these logits let every function
  here that takes `score_logits` use them unchanged, with `ScoreSpec.candidates(values)` as
  the score tokens and the score's index as its token id (temperature 1 only: the scores'
  probabilities are those of the policy itself). The full-vocabulary softmax is then the exact
  probability (mass on no score counts for none; `renormalize=True` divides it out), and
  gradients flow to the scores' log-probabilities exactly (the "no score" logit log(1 - S) has
  the derivative that makes the log-normaliser's gradient vanish).
  """
  lp = _float(score_log_probs)
  return jnp.concatenate([lp, _log_no_score(lp)[..., None]], axis=-1)


@functools.partial(jax.jit, static_argnames=("renormalize",))
def score_token_log_probs(
    score_logits: ArrayLike,
    score_token_ids: ArrayLike,
    *,
    renormalize: bool = False,
    temperature: ArrayLike = 1.0,
) -> Array:
  """log pi(k | x, c) for each score token k.

  Args:
    score_logits: `[..., V]` logits at the position that predicts the score token.
    score_token_ids: `[K]` int token ids of the scores (e.g. the tokens "1".."5").
    renormalize: False: full-vocabulary log-softmax (the authors' choice). True: log-softmax
      over the K score tokens only.
    temperature: logits are divided by it.

  Returns:
    `[..., K]` float32 log-probabilities.
  """
  _, sel, lse = _score_parts(score_logits, score_token_ids, temperature)
  if renormalize:
    lse = jax.nn.logsumexp(sel, axis=-1)
  return sel - lse[..., None]


@functools.partial(jax.jit, static_argnames=("renormalize",))
def expected_score(
    score_logits: ArrayLike,
    score_token_ids: ArrayLike,
    score_values: ArrayLike,
    *,
    renormalize: bool = False,
    temperature: ArrayLike = 1.0,
) -> Array:
  """RAIL expected score `y_hat = sum_k v_k pi(k | x, c)`.

  Args:
    score_logits: `[..., V]` logits at the position that predicts the score token.
    score_token_ids: `[K]` int token ids of the score tokens.
    score_values: `[K]` numeric values of those tokens (e.g. 1..5).
    renormalize: False (default, the authors' choice): full-vocabulary softmax probabilities,
      so probability mass outside the score tokens pulls y_hat toward 0. True: softmax over the
      score tokens only (y_hat always lies within [min v, max v]).
    temperature: logits are divided by it.

  Returns:
    `[...]` float32 expected score.
  """
  logp = score_token_log_probs(score_logits, score_token_ids, renormalize=renormalize,
                               temperature=temperature)
  return jnp.sum(jnp.exp(logp) * _float(score_values), axis=-1)


@jax.jit
def score_token_mass(score_logits: ArrayLike, score_token_ids: ArrayLike, *,
                     temperature: ArrayLike = 1.0) -> Array:
  """Total probability `sum_k pi(k | x, c)` on the score tokens, `[..., V] -> [...]` (log it)."""
  _, sel, lse = _score_parts(score_logits, score_token_ids, temperature)
  return jnp.exp(jax.nn.logsumexp(sel, axis=-1) - lse)


@jax.jit
def score_log_prob(score_logits: ArrayLike, target_token_ids: ArrayLike, *,
                   temperature: ArrayLike = 1.0) -> Array:
  """log pi(y* | x, c) under the full-vocabulary softmax.

  Args:
    score_logits: `[..., V]` logits at the score position.
    target_token_ids: `[...]` int token id of the true score per row.
    temperature: logits are divided by it.

  Returns:
    `[...]` float32 log-probability (computed as logit - logsumexp, never log(softmax)).
  """
  logits = _float(score_logits) / temperature
  ids = jnp.asarray(target_token_ids)
  tgt = jnp.take_along_axis(logits, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return tgt - jax.nn.logsumexp(logits, axis=-1)


@jax.jit
def target_token_ids_for(targets: ArrayLike, score_token_ids: ArrayLike,
                         score_values: ArrayLike) -> Array:
  """Token id of the score value nearest to each target, `[...] -> [...]` int32.

  Used for the lam * -log pi(y*) term when targets are given as numbers; ties (e.g. 3.5) go to
  the lower value. Pass `target_token_ids=` to `real_loss` to choose them yourself.
  """
  t = _float(targets)
  dist = jnp.abs(t[..., None] - _float(score_values))
  return jnp.take(jnp.asarray(score_token_ids), jnp.argmin(dist, axis=-1)).astype(jnp.int32)


@jax.jit
def token_log_probs(logits: ArrayLike, tokens: ArrayLike, *, temperature: ArrayLike = 1.0) -> Array:
  """log pi(tokens) from logits: `[..., V]`, `[...]` -> `[...]` float32 (log_softmax + gather).

  Materialises a float32 `[..., V]` array: for long sequences and a large vocabulary, compute
  the chosen tokens' log-probs in chunks inside the model instead.
  """
  logp = jax.nn.log_softmax(_float(logits) / temperature, axis=-1)
  ids = jnp.asarray(tokens).astype(jnp.int32)
  return jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]


@jax.jit
def token_entropy(logits: ArrayLike, *, temperature: ArrayLike = 1.0) -> Array:
  """Entropy of softmax(logits / temperature), `[..., V] -> [...]` float32."""
  logp = jax.nn.log_softmax(_float(logits) / temperature, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


# ==============================================================================
# Rewards
# ==============================================================================


@register_reward("regression")
@jax.jit
def regression_reward(expected: ArrayLike, target: ArrayLike) -> Array:
  """Regression reward `-(expected - target)^2`, elementwise, float32."""
  return -jnp.square(_float(expected) - _float(target))


@register_reward("binary")
@jax.jit
def binary_reward(sampled_score: ArrayLike, target: ArrayLike) -> Array:
  """Standard-RL reward `1[sampled_score == target]`, elementwise, float32.

  Use an out-of-range value (e.g. -1) for samples whose score could not be parsed: they get 0.
  """
  return (_float(sampled_score) == _float(target)).astype(jnp.float32)


# ==============================================================================
# Group advantages
# ==============================================================================


@register_advantage_estimator("rloo")
def _rloo(rewards: Array, mask: Array) -> Array:
  """Leave-one-out baseline: A_i = r_i - mean_{j != i} r_j (0 for a sample with no peers)."""
  total = jnp.sum(rewards * mask, axis=-1, keepdims=True)
  count = jnp.sum(mask, axis=-1, keepdims=True)
  others = count - 1.0
  # r_i - (S - r_i) / (C - 1) = (C r_i - S) / (C - 1): exactly 0 for a constant group.
  adv = (count * rewards - total) / jnp.maximum(others, 1.0)
  return jnp.where((mask > 0) & (others > 0), adv, 0.0)


@register_advantage_estimator("grpo")
def _grpo(rewards: Array, mask: Array) -> Array:
  """Group-mean baseline: A_i = r_i - mean_j r_j."""
  total = jnp.sum(rewards * mask, axis=-1, keepdims=True)
  count = jnp.sum(mask, axis=-1, keepdims=True)
  return jnp.where(mask > 0, _safe_div(count * rewards - total, count), 0.0)


@register_advantage_estimator("none")
def _no_baseline(rewards: Array, mask: Array) -> Array:
  """Raw rewards (no baseline)."""
  return jnp.where(mask > 0, rewards, 0.0)


@functools.partial(jax.jit, static_argnames=("estimator", "normalize", "clip", "ddof"))
def group_advantages(
    rewards: ArrayLike,
    *,
    estimator: str = "rloo",
    normalize: bool = True,
    clip: float | None = 1.0,
    eps: ArrayLike = 1e-8,
    mask: ArrayLike | None = None,
    ddof: int = 0,
) -> Array:
  """Advantages within each group of samples of one prompt.

  Args:
    rewards: `[num_groups, group_size]` (any leading dims; the group is the last axis).
    estimator: a name in `ADVANTAGE_ESTIMATORS`: "rloo" (leave-one-out baseline), "grpo"
      (group-mean baseline) or "none" (raw rewards).
    normalize: divide by the std of the estimator's output over the group, plus `eps`. With
      ddof=0 (population std) this is the authors' recipe `A / (std_pop(A) + eps)`; for "rloo"
      the LOO factor n/(n-1) cancels, so the result is the group z-score, same as "grpo".
      GRPO as verl computes it is `estimator="grpo", ddof=1, eps=1e-6, clip=None`.
    clip: clip to [-clip, clip] (authors: 1.0); None disables clipping (static argument).
    eps: added to the std.
    mask: optional `[num_groups, group_size]`, 0 for samples that are excluded (they get 0 and
      do not enter any baseline or std).
    ddof: delta degrees of freedom of the std (0: population, the authors'; 1: sample std,
      torch.std's default as used by verl's GRPO).

  Returns:
    `[num_groups, group_size]` float32 advantages (0 where masked; 0 for a constant group).
  """
  r = _float(rewards)
  if r.ndim < 1:
    raise ValueError(f"rewards must be [num_groups, group_size], got shape {r.shape}")
  m = jnp.ones_like(r) if mask is None else jnp.asarray(mask).astype(r.dtype)
  adv = ADVANTAGE_ESTIMATORS.lookup(estimator)(r, m)
  if normalize:
    count = jnp.sum(m, axis=-1, keepdims=True)
    mu = _safe_div(jnp.sum(adv * m, axis=-1, keepdims=True), count)
    var = _safe_div(jnp.sum(jnp.square(adv - mu) * m, axis=-1, keepdims=True), count - ddof)
    # A group whose rewards are all equal carries no signal: 0, not rounding noise / eps.
    big = jnp.finfo(r.dtype).max
    hi = jnp.max(jnp.where(m > 0, r, -big), axis=-1, keepdims=True)
    lo = jnp.min(jnp.where(m > 0, r, big), axis=-1, keepdims=True)
    adv = jnp.where(hi > lo, adv / (jnp.sqrt(var) + eps), 0.0)
  if clip is not None:
    adv = jnp.clip(adv, -clip, clip)
  return jnp.where(m > 0, adv, 0.0)


@dataclasses.dataclass(frozen=True)
class AdvantageRecipe:
  """The settings of `group_advantages` (and of both parts of `real_advantages`), passed as
  keywords: `group_advantages(rewards, **recipe)`."""
  estimator: str = "rloo"  # a registry.ADVANTAGE_ESTIMATORS name
  normalize: bool = True  # divide by the group's std (+ eps)
  clip: float | None = 1.0  # clip to [-clip, clip]; None (or 0): no clipping
  ddof: int = 0  # std: 0 population (the authors'), 1 sample (verl's GRPO)
  eps: float = 1e-8

  def __post_init__(self):
    if not self.clip:
      object.__setattr__(self, "clip", None)  # clip 0 means no clipping, as in the config

  # A mapping of the keyword arguments (`**recipe`).
  def keys(self):
    return [f.name for f in dataclasses.fields(self)]

  def __getitem__(self, key: str):
    return getattr(self, key)

  def describe(self) -> str:
    """A short human-readable label (for result tables)."""
    base = {"rloo": "leave-one-out baseline", "grpo": "group-mean baseline",
            "none": "no baseline"}.get(self.estimator, self.estimator)
    parts = [base]
    if self.normalize:
      parts.append(f"/ ({'sample' if self.ddof else 'population'} std + {self.eps:g})")
    parts.append(f"clip ±{self.clip:g}" if self.clip else "no clip")
    return ", ".join(parts)


def describe_advantages(estimator: str, normalize: bool, clip: float | None, ddof: int = 0,
                        eps: float = 1e-8) -> str:
  """`AdvantageRecipe(...).describe()`: a short label of advantage settings."""
  return AdvantageRecipe(estimator, normalize, clip, ddof, eps).describe()


# Named advantage recipes: the settings of `group_advantages` that a config picks by name.
ADVANTAGE_RECIPES: dict[str, AdvantageRecipe] = {
    # REAL's authors (and their binary-RLOO ablation): leave-one-out, / population std, clip +-1.
    "authors": AdvantageRecipe("rloo", normalize=True, clip=1.0, ddof=0, eps=1e-8),
    # GRPO as DeepSeek and verl define it: group mean, / (sample std + 1e-6), no clipping.
    "grpo": AdvantageRecipe("grpo", normalize=True, clip=None, ddof=1, eps=1e-6),
    # The exact generalized policy gradient's: leave-one-out, no normalisation, no clipping.
    "rloo": AdvantageRecipe("rloo", normalize=False, clip=None, ddof=0, eps=1e-8),
}


def worst_squared_error(score_values: ArrayLike, *, renormalize: bool = False) -> float:
  """The largest (y_hat - y*)^2 a valid row can have, for targets within the score values.

  With the full-vocabulary softmax (renormalize=False) y_hat = sum_k v_k p_k with sum_k p_k <= 1
  lies in [min(0, min v), max(0, max v)] (mass off the score tokens pulls it to 0): for scores
  1..5 that is (5 - 0)^2 = 25. Renormalised, y_hat lies in [min v, max v]: (5 - 1)^2 = 16. A row
  without a valid score should get at most the reward -worst, so it is never preferred to a
  valid one.
  """
  v = np.asarray(score_values, np.float64)
  t_lo, t_hi = float(v.min()), float(v.max())
  y_lo, y_hi = (t_lo, t_hi) if renormalize else (min(0.0, t_lo), max(0.0, t_hi))
  return float(max((y_hi - t_lo) ** 2, (t_hi - y_lo) ** 2))


@functools.partial(jax.jit, static_argnames=("shaping", "estimator", "normalize", "clip", "ddof"))
def real_advantages(
    reg_rewards: ArrayLike,
    target_log_probs: ArrayLike,
    lam: ArrayLike = 1.0,
    *,
    shaping: str = "prob",
    estimator: str = "rloo",
    normalize: bool = True,
    clip: float | None = 1.0,
    eps: ArrayLike = 1e-8,
    mask: ArrayLike | None = None,
    ddof: int = 0,
) -> Array:
  """The authors' combined REAL advantage: `adv(reg_rewards) + lam * adv(shaping reward)`.

  Each part goes through `group_advantages` separately (default: LOO, divide by population std
  + 1e-8, clip to +-1), so with lam = 1 the sum lies in [-2, 2].

  Args:
    reg_rewards: `[num_groups, group_size]` regression rewards -(y_hat - y*)^2 (no-grad pass).
    target_log_probs: `[num_groups, group_size]` log pi(y* | x, c_i) (see `score_log_prob`).
    lam: weight of the shaping advantage (authors' `beta_supp`, 1.0).
    shaping: "prob": shaping reward p(y*) = exp(log p) (authors' default);
      "log_prob": log p(y*); "none": regression advantage only.
    estimator, normalize, clip, eps, mask, ddof: as in `group_advantages`, used for both parts.

  Returns:
    `[num_groups, group_size]` float32 advantages, constant over each CoT.
  """
  kw = dict(estimator=estimator, normalize=normalize, clip=clip, eps=eps, mask=mask, ddof=ddof)
  adv = group_advantages(reg_rewards, **kw)
  shape = SHAPINGS.lookup(shaping)
  if shape is None:
    return adv
  return adv + lam * group_advantages(shape(_float(target_log_probs)), **kw)


# Shaping rewards of `real_advantages`, from log pi(y* | x, c); None = no shaping term.
register_shaping("prob")(jnp.exp)
register_shaping("log_prob")(lambda lp: lp)
register_shaping("none")(None)


@register_group_filter("partial")
@jax.jit
def partial_group_mask(binary_rewards: ArrayLike, *, mask: ArrayLike | None = None) -> Array:
  """Authors' "partial" filter: groups whose mean binary reward is strictly in (0, 1).

  Args:
    binary_rewards: `[num_groups, group_size]` in {0, 1}.
    mask: optional `[num_groups, group_size]` valid samples.

  Returns:
    `[num_groups]` bool (True = keep: some but not all samples got the exact score).
  """
  b = _float(binary_rewards)
  m = jnp.ones_like(b) if mask is None else jnp.asarray(mask).astype(b.dtype)
  hits = jnp.sum(b * m, axis=-1)
  return (hits > 0) & (hits < jnp.sum(m, axis=-1))


@register_group_filter("all")
def _all_groups(binary_rewards: ArrayLike) -> Array:
  return jnp.ones(jnp.shape(binary_rewards)[:-1], bool)


@register_group_filter("not_all_correct")
def _not_all_correct(binary_rewards: ArrayLike) -> Array:
  return jnp.mean(_float(binary_rewards), axis=-1) < 1.0


@register_group_filter("not_all_wrong")
def _not_all_wrong(binary_rewards: ArrayLike) -> Array:
  return jnp.mean(_float(binary_rewards), axis=-1) > 0.0


# ==============================================================================
# Policy-gradient terms (per token)
# ==============================================================================


def _broadcast_adv(advantages: ArrayLike, log_probs: Array) -> Array:
  a = jax.lax.stop_gradient(_float(advantages))
  return a[..., None] if a.ndim == log_probs.ndim - 1 else a


@register_policy_loss("reinforce")
def _reinforce(log_probs, advantages, *, old_log_probs=None, clip_eps=0.2, clip_eps_high=None):
  """Plain REINFORCE, -log pi * A (the authors' `gpg`); old log-probs are ignored."""
  del old_log_probs, clip_eps, clip_eps_high
  return -log_probs * advantages, jnp.zeros_like(log_probs)


@register_policy_loss("ppo")
def _ppo(log_probs, advantages, *, old_log_probs=None, clip_eps=0.2, clip_eps_high=None):
  """PPO clipped ratio: max(-rho A, -clip(rho, 1 - eps, 1 + eps_high) A), rho = pi / pi_old.

  Without `old_log_probs` the ratio is taken against stop_gradient(log_probs) (on-policy: value
  -A, gradient identical to REINFORCE).
  """
  old = jax.lax.stop_gradient(log_probs if old_log_probs is None else old_log_probs)
  hi = clip_eps if clip_eps_high is None else clip_eps_high
  ratio = jnp.exp(log_probs - old)
  loss1 = -ratio * advantages
  loss2 = -jnp.clip(ratio, 1.0 - clip_eps, 1.0 + hi) * advantages
  return jnp.maximum(loss1, loss2), (loss2 > loss1).astype(log_probs.dtype)


def _policy_term(policy_loss, log_probs, mask, advantages, old_log_probs, clip_eps, clip_eps_high):
  """Per-token loss and clip indicator with masked positions sanitised (no inf * 0)."""
  m = jnp.asarray(mask) > 0
  lp = jnp.where(m, _float(log_probs), 0.0)
  old = None if old_log_probs is None else jnp.where(m, _float(old_log_probs), 0.0)
  fn = POLICY_LOSSES.lookup(policy_loss)
  return fn(lp, _broadcast_adv(advantages, lp), old_log_probs=old, clip_eps=clip_eps,
            clip_eps_high=clip_eps_high)


@register_loss("pg")
@functools.partial(jax.jit, static_argnames=("aggregation", "policy_loss"))
def policy_gradient_loss(
    log_probs: ArrayLike,
    mask: ArrayLike,
    advantages: ArrayLike,
    *,
    old_log_probs: ArrayLike | None = None,
    policy_loss: str | None = None,
    clip_eps: ArrayLike = 0.2,
    clip_eps_high: ArrayLike | None = None,
    aggregation: str = "token-mean",
    sample_mask: ArrayLike | None = None,
    denominator: ArrayLike | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Standard-RL policy loss on given advantages (e.g. GRPO/RLOO on the binary reward).

  Args:
    log_probs: `[B, T]` log pi of the sampled tokens (differentiable).
    mask: `[B, T]` 1 on the tokens to train.
    advantages: `[B]` (or `[B, T]`) advantages, treated as constants.
    old_log_probs: `[B, T]` log-probs of the sampling policy. Given: PPO clipped-ratio loss;
      None: plain REINFORCE `-log pi * A`.
    policy_loss: override the choice above with a name in `POLICY_LOSSES`.
    clip_eps, clip_eps_high: PPO clip range [1 - clip_eps, 1 + clip_eps_high]
      (clip_eps_high defaults to clip_eps).
    aggregation: "token-mean", "sequence-mean" or "sequence-sum" (see `masked_aggregate_sums`).
    sample_mask: optional `[B]`, 0 drops a sequence.
    denominator: divide by this global count instead of the local one (micro-batching).

  Returns:
    `(loss, metrics)`; metrics: "loss", "clip_frac" (fraction of tokens whose ratio was
    clipped), "advantage" (mean over sequences), "num_tokens".
  """
  if policy_loss is None:
    policy_loss = "reinforce" if old_log_probs is None else "ppo"
  per_tok, clipped = _policy_term(policy_loss, log_probs, mask, advantages, old_log_probs,
                                  clip_eps, clip_eps_high)
  loss = masked_aggregate(per_tok, mask, aggregation=aggregation, sample_mask=sample_mask,
                          denominator=denominator)
  cs, cd = masked_aggregate_sums(clipped, mask, sample_mask=sample_mask)
  adv = _float(advantages)
  adv_seq = adv if adv.ndim == per_tok.ndim - 1 else jnp.mean(adv, axis=-1)
  w = _seq_weights(adv_seq.shape, sample_mask, adv_seq.dtype)
  return loss, {"loss": loss, "clip_frac": _safe_div(cs, cd),
                "advantage": _safe_div(jnp.sum(adv_seq * w), jnp.sum(w)), "num_tokens": cd}


@register_kl_estimator("k1")
def _kl_k1(lp: Array, ref: Array) -> Array:
  return lp - ref


@register_kl_estimator("k2")
def _kl_k2(lp: Array, ref: Array) -> Array:
  return 0.5 * jnp.square(lp - ref)


@register_kl_estimator("k3")
def _kl_k3(lp: Array, ref: Array) -> Array:
  d = ref - lp
  return jnp.exp(d) - d - 1.0


@functools.partial(jax.jit, static_argnames=("estimator", "aggregation"))
def kl_penalty(
    log_probs: ArrayLike,
    ref_log_probs: ArrayLike,
    mask: ArrayLike,
    *,
    estimator: str = "k3",
    aggregation: str = "token-mean",
    sample_mask: ArrayLike | None = None,
    denominator: ArrayLike | None = None,
) -> Array:
  """Masked mean of a per-token estimate of KL(pi || pi_ref) on tokens sampled from pi.

  Args:
    log_probs: `[B, T]` log pi (differentiable).
    ref_log_probs: `[B, T]` log pi_ref (constant).
    mask: `[B, T]`.
    estimator: "k1": log pi - log pi_ref (unbiased, high variance, can be negative);
      "k2": 0.5 (log pi - log pi_ref)^2; "k3": exp(d) - d - 1 with d = log pi_ref - log pi
      (unbiased, >= 0, low variance; Schulman's estimator).
    aggregation, sample_mask, denominator: as in `masked_aggregate`.

  Returns:
    scalar penalty; add `kl_coef * kl_penalty(...)` to the loss.
  """
  m = jnp.asarray(mask) > 0
  lp = jnp.where(m, _float(log_probs), 0.0)
  ref = jnp.where(m, jax.lax.stop_gradient(_float(ref_log_probs)), 0.0)
  per_tok = KL_ESTIMATORS.lookup(estimator)(lp, ref)
  return masked_aggregate(per_tok, mask, aggregation=aggregation, sample_mask=sample_mask,
                          denominator=denominator)


@functools.partial(jax.jit, static_argnames=("aggregation",))
def entropy_bonus(
    logits: ArrayLike,
    mask: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    aggregation: str = "token-mean",
    sample_mask: ArrayLike | None = None,
    denominator: ArrayLike | None = None,
) -> Array:
  """Masked mean entropy of the policy; subtract `entropy_coef * entropy_bonus(...)` from the loss.

  Args:
    logits: `[B, T, V]` logits (call it on chunks of T for a large vocabulary; for precomputed
      per-token entropies use `masked_aggregate(entropies, mask)`).
    mask: `[B, T]`.
    temperature: divides the logits.
    aggregation, sample_mask, denominator: as in `masked_aggregate`.

  Returns:
    scalar mean entropy (nats).
  """
  return masked_aggregate(token_entropy(logits, temperature=temperature), mask,
                          aggregation=aggregation, sample_mask=sample_mask,
                          denominator=denominator)


# ==============================================================================
# REAL
# ==============================================================================


class RealLossSums(NamedTuple):
  """Additive pieces of `real_loss` (a pytree: add them over micro-batches with `jax.tree.map`).

  pg_sum: token-mean and sequence-sum: sum over CoT tokens of the per-token policy loss
    (-log pi * A); sequence-mean: sum over sequences of their per-sequence token mean.
  pg_count: number of CoT tokens (token-mean) or of sequences (sequence-mean, sequence-sum).
  sq_err_sum: sum over sequences of (y_hat - y*)^2.
  nll_sum: sum over sequences of -log pi(y* | x, c).
  seq_count: number of sequences.
  """
  pg_sum: Array
  pg_count: Array
  sq_err_sum: Array
  nll_sum: Array
  seq_count: Array


@functools.partial(jax.jit, static_argnames=("aggregation",))
def real_loss_denominators(
    cot_mask: ArrayLike, *, sample_mask: ArrayLike | None = None,
    aggregation: str = "token-mean") -> tuple[Array, Array]:
  """`(pg_count, seq_count)` of a batch, from masks only (compute once on the full batch).

  Args:
    cot_mask: `[B, T]`.
    sample_mask: optional `[B]`.

  Returns:
    the full-batch denominators to pass as `denominators=` to `real_loss` /
    `real_loss_from_sums` for each micro-batch.
  """
  zeros = jnp.zeros(jnp.shape(cot_mask), jnp.float32)
  _, pg_count = masked_aggregate_sums(zeros, cot_mask, aggregation=aggregation,
                                      sample_mask=sample_mask)
  return pg_count, jnp.sum(_seq_weights(zeros.shape[:-1], sample_mask, jnp.float32))


@functools.partial(jax.jit, static_argnames=("renormalize", "aggregation", "policy_loss"))
def real_loss_sums(
    cot_log_probs: ArrayLike,
    cot_mask: ArrayLike,
    advantages: ArrayLike,
    score_logits: ArrayLike,
    targets: ArrayLike,
    score_token_ids: ArrayLike,
    score_values: ArrayLike,
    *,
    renormalize: bool = False,
    aggregation: str = "token-mean",
    temperature: ArrayLike = 1.0,
    target_token_ids: ArrayLike | None = None,
    sample_mask: ArrayLike | None = None,
    policy_loss: str = "reinforce",
    old_cot_log_probs: ArrayLike | None = None,
    clip_eps: ArrayLike = 0.2,
    clip_eps_high: ArrayLike | None = None,
) -> tuple[RealLossSums, dict[str, Array]]:
  """(sum, denominator) form of `real_loss`: same arguments, without beta/lam/denominators.

  Combine with `real_loss_from_sums`.

  Returns:
    `(sums, aux_sums)`: a `RealLossSums` and a dict of sums over sequences ("expected_score",
    "advantage", "score_mass", "target_prob") and over tokens ("clipped_tokens"), for metrics.
  """
  per_tok, clipped = _policy_term(policy_loss, cot_log_probs, cot_mask, advantages,
                                  old_cot_log_probs, clip_eps, clip_eps_high)
  pg_sum, pg_count = masked_aggregate_sums(per_tok, cot_mask, aggregation=aggregation,
                                           sample_mask=sample_mask)
  clipped_sum, _ = masked_aggregate_sums(clipped, cot_mask, sample_mask=sample_mask)

  ids = jnp.asarray(score_token_ids)
  logits, sel, lse = _score_parts(score_logits, ids, temperature)
  norm = jax.nn.logsumexp(sel, axis=-1) if renormalize else lse
  y_hat = jnp.sum(jnp.exp(sel - norm[..., None]) * _float(score_values), axis=-1)
  if target_token_ids is None:
    target_token_ids = target_token_ids_for(targets, ids, score_values)
  tgt_ids = jnp.asarray(target_token_ids).astype(jnp.int32)
  # log pi(y*) under the full-vocabulary softmax: the policy's own probability of the digit.
  tgt_logp = jnp.take_along_axis(logits, tgt_ids[..., None], axis=-1)[..., 0] - lse
  mass = jnp.exp(jax.nn.logsumexp(sel, axis=-1) - lse)

  w = _seq_weights(y_hat.shape, sample_mask, y_hat.dtype)
  keep = w > 0
  sq_err = jnp.where(keep, jnp.square(y_hat - _float(targets)), 0.0)
  nll = jnp.where(keep, -tgt_logp, 0.0)
  adv = _float(advantages)
  adv_seq = adv if adv.ndim == y_hat.ndim else jnp.mean(adv, axis=-1)
  sums = RealLossSums(pg_sum=pg_sum, pg_count=pg_count, sq_err_sum=jnp.sum(sq_err * w),
                      nll_sum=jnp.sum(nll * w), seq_count=jnp.sum(w))
  sg = jax.lax.stop_gradient
  aux = {
      "expected_score": jnp.sum(jnp.where(keep, sg(y_hat), 0.0) * w),
      "advantage": jnp.sum(jnp.where(keep, adv_seq, 0.0) * w),
      "score_mass": jnp.sum(jnp.where(keep, sg(mass), 0.0) * w),
      "target_prob": jnp.sum(jnp.where(keep, jnp.exp(sg(tgt_logp)), 0.0) * w),
      "clipped_tokens": sg(clipped_sum),
  }
  return sums, aux


@jax.jit
def real_loss_terms(
    sums: RealLossSums, *, beta: ArrayLike, lam: ArrayLike,
    denominators: tuple[ArrayLike, ArrayLike] | None = None) -> tuple[Array, Array]:
  """The two terms of the REAL loss: `(pg_sum / pg_count, beta * (sq_err_sum + lam * nll_sum) /
  seq_count)`; the loss is their sum.

  Args:
    sums: a `RealLossSums` (one micro-batch's, or several added together).
    beta, lam: REAL coefficients.
    denominators: `(pg_count, seq_count)` of the FULL batch (`real_loss_denominators`). Given,
      the per-micro-batch results add up exactly to the full-batch loss, and so do their
      gradients. None: use the counts in `sums`.
  """
  pg_den, seq_den = (sums.pg_count, sums.seq_count) if denominators is None else denominators
  pg = _safe_div(sums.pg_sum, pg_den)
  refine = beta * _safe_div(sums.sq_err_sum + lam * sums.nll_sum, seq_den)
  return pg, refine


@jax.jit
def real_loss_from_sums(
    sums: RealLossSums, *, beta: ArrayLike, lam: ArrayLike,
    denominators: tuple[ArrayLike, ArrayLike] | None = None) -> Array:
  """`pg_sum / pg_count + beta * (sq_err_sum + lam * nll_sum) / seq_count` (`real_loss_terms`
  summed)."""
  pg, refine = real_loss_terms(sums, beta=beta, lam=lam, denominators=denominators)
  return pg + refine


@register_loss("real")
@functools.partial(jax.jit, static_argnames=("renormalize", "aggregation", "policy_loss"))
def real_loss(
    cot_log_probs: ArrayLike,
    cot_mask: ArrayLike,
    advantages: ArrayLike,
    score_logits: ArrayLike,
    targets: ArrayLike,
    score_token_ids: ArrayLike,
    score_values: ArrayLike,
    *,
    beta: ArrayLike,
    lam: ArrayLike,
    renormalize: bool = False,
    aggregation: str = "token-mean",
    temperature: ArrayLike = 1.0,
    target_token_ids: ArrayLike | None = None,
    sample_mask: ArrayLike | None = None,
    policy_loss: str = "reinforce",
    old_cot_log_probs: ArrayLike | None = None,
    clip_eps: ArrayLike = 0.2,
    clip_eps_high: ArrayLike | None = None,
    denominators: tuple[ArrayLike, ArrayLike] | None = None,
) -> tuple[Array, dict[str, Array]]:
  """The REAL loss (generalized policy gradient surrogate) to minimise.

  loss = agg_CoT(-log pi(c_t) * stop_grad(A))
         + beta * [mean (y_hat - y*)^2 + lam * mean(-log pi(y* | x, c))]

  Args:
    cot_log_probs: `[B, T]` log pi(c_t | x, c_<t) of the sampled CoT tokens (differentiable).
    cot_mask: `[B, T]` 1 on CoT tokens. It must NOT include the score token (nor padding):
      the score token is trained by the refinement term only.
    advantages: `[B]` advantages (e.g. `real_advantages(...).reshape(-1)`), or `[B, T]`;
      treated as constants.
    score_logits: `[B, V]` logits at the position that predicts the score token
      (differentiable; bf16 is fine, the math is float32).
    targets: `[B]` float true scores y*.
    score_token_ids: `[K]` token ids of the score tokens.
    score_values: `[K]` their values.
    beta: weight of the refinement (supervised) term; 0 gives the CoT term only (biased for J).
    lam: weight of -log pi(y* | x, c) inside the refinement term.
    renormalize: y_hat from the score-token softmax (True) or the full-vocabulary softmax
      (False, the authors' choice). The -log pi(y*) term always uses the full vocabulary.
    aggregation: "token-mean" (mean over all CoT tokens of the batch, the authors' choice),
      "sequence-mean" (mean over sequences of each CoT's token mean) or "sequence-sum" (mean over
      sequences of each CoT's token sum: the exact generalized policy gradient, see the module
      docstring for the settings under which it is unbiased).
    temperature: divides the score logits.
    target_token_ids: `[B]` token ids of y*; default: the score token whose value is nearest.
    sample_mask: optional `[B]`; 0 removes a sequence from both terms (e.g. groups dropped by
      the partial filter, malformed samples), keeping shapes static.
    policy_loss: "reinforce" (authors) or "ppo" (clipped ratio against `old_cot_log_probs`,
      for several optimiser steps per batch); any name in `POLICY_LOSSES`.
    old_cot_log_probs: `[B, T]` sampling-policy log-probs, for "ppo".
    clip_eps, clip_eps_high: PPO clip range.
    denominators: `(pg_count, seq_count)` of the full batch for micro-batching
      (`real_loss_denominators`); the micro-batch losses and gradients then sum exactly to the
      full batch's. None: this batch's own counts.

  Returns:
    `(loss, metrics)`. metrics: "loss"; "pg_loss" and "refine_loss" (the two terms, summing to
    "loss"; refine includes beta); "mse"; "nll" (mean -log pi(y*)); "expected_score" (mean
    y_hat); "advantage" (mean A); "score_mass" (mean probability on the score tokens);
    "target_prob" (mean pi(y*)); "clip_frac". Statistics are means over this batch.
  """
  sums, aux = real_loss_sums(
      cot_log_probs, cot_mask, advantages, score_logits, targets, score_token_ids,
      score_values, renormalize=renormalize, aggregation=aggregation, temperature=temperature,
      target_token_ids=target_token_ids, sample_mask=sample_mask, policy_loss=policy_loss,
      old_cot_log_probs=old_cot_log_probs, clip_eps=clip_eps, clip_eps_high=clip_eps_high)
  pg, refine = real_loss_terms(sums, beta=beta, lam=lam, denominators=denominators)
  loss = pg + refine
  sg = jax.lax.stop_gradient
  n_seq = sums.seq_count
  _, n_tok = masked_aggregate_sums(jnp.zeros(jnp.shape(cot_mask)), cot_mask,
                                   sample_mask=sample_mask)
  metrics = {
      "loss": sg(loss),
      "pg_loss": sg(pg),
      "refine_loss": sg(refine),
      "mse": sg(_safe_div(sums.sq_err_sum, n_seq)),
      "nll": sg(_safe_div(sums.nll_sum, n_seq)),
      "expected_score": _safe_div(aux["expected_score"], n_seq),
      "advantage": _safe_div(aux["advantage"], n_seq),
      "score_mass": _safe_div(aux["score_mass"], n_seq),
      "target_prob": _safe_div(aux["target_prob"], n_seq),
      "clip_frac": _safe_div(aux["clipped_tokens"], n_tok),
  }
  return loss, metrics


# ==============================================================================
# Baselines
# ==============================================================================


@register_loss("sft")
@functools.partial(jax.jit, static_argnames=("aggregation",))
def sft_loss(
    target_log_probs: ArrayLike,
    mask: ArrayLike,
    *,
    aggregation: str = "token-mean",
    sample_mask: ArrayLike | None = None,
    denominator: ArrayLike | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Masked cross-entropy (warm-up SFT): mean of -log pi(target token).

  Args:
    target_log_probs: `[B, T]` log pi of the target tokens (e.g. `token_log_probs`).
    mask: `[B, T]` 1 on the target (response) tokens.
    aggregation, sample_mask, denominator: as in `masked_aggregate`.

  Returns:
    `(loss, {"loss", "num_tokens"})`.
  """
  nll = -_float(target_log_probs)
  loss = masked_aggregate(nll, mask, aggregation=aggregation, sample_mask=sample_mask,
                          denominator=denominator)
  _, n = masked_aggregate_sums(nll, mask, sample_mask=sample_mask)
  return loss, {"loss": jax.lax.stop_gradient(loss), "num_tokens": n}


@register_loss("raft")
@functools.partial(jax.jit, static_argnames=("renormalize",))
def raft_loss(
    score_logits: ArrayLike,
    targets: ArrayLike,
    score_token_ids: ArrayLike,
    score_values: ArrayLike,
    *,
    renormalize: bool = False,
    temperature: ArrayLike = 1.0,
    sample_mask: ArrayLike | None = None,
    denominator: ArrayLike | None = None,
) -> tuple[Array, dict[str, Array]]:
  """RAFT: squared error of the expected score at the score position (no CoT).

  Args:
    score_logits: `[B, V]`; targets: `[B]`; score_token_ids, score_values: `[K]`.
    renormalize, temperature: as in `expected_score`.
    sample_mask: optional `[B]`; denominator: global sequence count (micro-batching).

  Returns:
    `(loss, {"loss", "mse", "expected_score", "score_mass"})`; loss = mean (y_hat - y*)^2.
  """
  y_hat = expected_score(score_logits, score_token_ids, score_values, renormalize=renormalize,
                         temperature=temperature)
  w = _seq_weights(y_hat.shape, sample_mask, y_hat.dtype)
  sq = jnp.where(w > 0, jnp.square(y_hat - _float(targets)), 0.0)
  n = jnp.sum(w)
  loss = _safe_div(jnp.sum(sq * w), n if denominator is None else denominator)
  sg = jax.lax.stop_gradient
  mass = score_token_mass(sg(score_logits), score_token_ids, temperature=temperature)
  return loss, {"loss": sg(loss), "mse": sg(_safe_div(jnp.sum(sq * w), n)),
                "expected_score": _safe_div(jnp.sum(jnp.where(w > 0, sg(y_hat), 0.0) * w), n),
                "score_mass": _safe_div(jnp.sum(jnp.where(w > 0, mass, 0.0) * w), n)}


@register_loss("cot_raft")
@functools.partial(jax.jit, static_argnames=("renormalize", "aggregation"))
def cot_raft_loss(
    cot_log_probs: ArrayLike,
    cot_mask: ArrayLike,
    score_logits: ArrayLike,
    targets: ArrayLike,
    score_token_ids: ArrayLike,
    score_values: ArrayLike,
    *,
    lam: ArrayLike = 1.0,
    renormalize: bool = False,
    aggregation: str = "token-mean",
    temperature: ArrayLike = 1.0,
    sample_mask: ArrayLike | None = None,
    denominators: tuple[ArrayLike, ArrayLike] | None = None,
) -> tuple[Array, dict[str, Array]]:
  """CoT-RAFT / TRACT: CE over the CoT tokens + lam * squared error of y_hat.

  Args:
    cot_log_probs: `[B, T]` log pi of the target CoT tokens; cot_mask `[B, T]` (score token
      excluded, as in `real_loss`).
    score_logits: `[B, V]`; targets: `[B]`; score_token_ids, score_values: `[K]`.
    lam: weight of the squared-error term.
    denominators: `(token_count, seq_count)` of the full batch (`real_loss_denominators`).

  Returns:
    `(loss, {"loss", "ce", "mse", "expected_score", "score_mass"})`.
  """
  tok_den, seq_den = (None, None) if denominators is None else denominators
  ce, _ = sft_loss(cot_log_probs, cot_mask, aggregation=aggregation, sample_mask=sample_mask,
                   denominator=tok_den)
  mse, m = raft_loss(score_logits, targets, score_token_ids, score_values,
                     renormalize=renormalize, temperature=temperature,
                     sample_mask=sample_mask, denominator=seq_den)
  loss = ce + lam * mse
  sg = jax.lax.stop_gradient
  return loss, {"loss": sg(loss), "ce": sg(ce), "mse": m["mse"],
                "expected_score": m["expected_score"], "score_mass": m["score_mass"]}


register_loss("tract")(cot_raft_loss)  # TRACT is CoT-RAFT
