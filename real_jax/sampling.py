"""Group rollouts: n samples per prompt, decoded with the prompt's KV cache shared by its group.

`sample` is a pure, internally jitted function of (params, prompts, key): one prefill over the
(bucketed) left-padded prompts (`Qwen3.__call__` with `return_kv`), then a `lax.while_loop` whose
step is the model's own `qwen3.decode_step` against a `qwen3.DecodeCache` that holds each
prompt's keys once per group ([G, P]) and each row's own tokens ([B, R]); the loop exits as
soon as every row is done. This module keeps only the sampling policy: logits -> token (greedy,
temperature, top-k, sort-free exact top-p, repetition penalty), the stop rules and the loop.
It records per-token log-probs under the sampling distribution and under the untempered
policy. The teacher-forced scoring pass is `real_jax.models.score_sequences`; `scoring_inputs`
builds its inputs from a `SampleOutput`.

Rows of a `sample` call are grouped by prompt: row i*n + j is sample j of prompt i.

Stopping semantics (per row):
  * STOP_SEQUENCE: the generated tokens end with one of `stop_sequences`; the row ends right
    after the last stop token (the score token is then read by `score_sequences` at that
    position, not sampled). With `extra_tokens_after_stop=k` the row continues for exactly k more
    tokens (e.g. k=1: the sampled score digit for the "standard" readout); `stop_lengths` still
    says where the stop sequence ended. Stop sequences match generated tokens only.
  * EOS: the row sampled one of `eos_ids` (before any stop sequence). An EOS always ends a row;
    inside the extra tokens after a stop sequence it ends it early, with status STOP_SEQUENCE.
  * TRUNCATED: neither happened within `max_new_tokens` (lengths == max_new_tokens).
  `lengths` counts generated tokens INCLUDING the stop sequence / the EOS token / extra tokens.
  After a row ends, its tokens are `pad_id` and its log-probs 0.

Top-p without a sort. Sorting 32k logits per row is the CPU bottleneck (docs/architecture.md, A5), so the
nucleus threshold is found by a safeguarded interpolation search (Illinois regula falsi on the
probability threshold, masked-sum passes only): with e = exp(l - max l) and M(t) = sum_{e >= t} e,
the nucleus is {e >= tau*} with tau* = max{t : M(t) >= top_p * M(0)}. The search keeps lo, hi with
M(lo) >= target > M(hi) and stops once [lo, hi) holds exactly one element (M(lo) - M(hi) < 1.5 lo:
two elements would weigh >= 2 lo) or one float value (ties: all tied tokens are kept); rows still
searching after 10 passes with at most 32 tokens in [lo, hi) are finished by one top_k over those
tokens (`_nucleus_threshold`). This is the same set a sort-and-cumsum implementation keeps (up to float32 rounding of the partial sums and
tie order). Tokens are then drawn by inverse-CDF over vocabulary chunks (one uniform per row).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from real_jax import layout
from real_jax import objectives as obj
from real_jax import sharding as shd
from real_jax.models import qwen3

Array = jax.Array

__all__ = [
    "EOS", "STOP_SEQUENCE", "TRUNCATED", "SampleOutput", "SamplingConfig",
    "sample", "sample_from_logits", "scoring_inputs", "lower", "sampler_program",
    "prepare_prompts",
]

STOP_SEQUENCE = 0
EOS = 1
TRUNCATED = 2



# ---------------------------------------------------------------------------------------------
# Config and outputs


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Static sampling settings (hashable: a jit static argument; one compile per distinct value).

  Attributes:
    max_new_tokens: M, the width of the generated-token buffer (extra tokens included).
    temperature: logits are divided by it before top-k / top-p (ignored when greedy).
    top_k: keep the k most likely tokens (0 = off), applied before top_p (as transformers does).
    top_p: nucleus mass (1.0 = off).
    greedy: argmax decoding (sampling_log_probs are then 0).
    repetition_penalty: > 1 discourages every token already in the row's prompt or output, as
      transformers / vLLM do: its logit is divided by the penalty if positive, multiplied if
      negative, before temperature / top-k / top-p (1.0 = off; TRACT sampled with 1.03).
      sampling_log_probs are then of the penalised distribution; policy_log_probs stay the
      model's own.
    eos_ids: token ids that end a row.
    stop_sequences: token-id sequences that end a row (e.g. the tokenised score delimiter).
    pad_id: written after a row ends (and used to left-pad prompts to their bucket).
    prompt_buckets: prompt widths compiled for; a batch is cut/left-padded to the smallest bucket
      that holds its longest prompt (longer prompts round up to a multiple of the largest).
    extra_tokens_after_stop: tokens still sampled after a stop sequence (see module docstring).
    share_prompt_cache: store each prompt's KV cache once for its n rows (G x P + B x R slots,
      the default); False copies it to every row (B x (P + R) slots): same samples, kept to
      measure what sharing saves.
    cache_dtype: KV cache dtype (default: the model's compute dtype).
    max_search_iters: cap of the top-p threshold search (it converges in ~10-25 passes).
    vocab_chunk: chunk width of the inverse-CDF draw (0: a divisor of V near sqrt(V)).
    replicate_vocab: gather each step's logits over the vocabulary axis before sampling, so
      the samples do not depend on the mesh (costs one all-gather of [B*n, V] per step).
    capture_ids: token ids (e.g. the score tokens) whose log-probs are recorded at the first
      step after a stop sequence, i.e. the distribution that follows the delimiter
      (`SampleOutput.capture_log_probs`: log softmax over the vocabulary of the logits divided
      by `capture_temperature`); needs extra_tokens_after_stop >= 1, so that the step runs.
      The buffer's last column is then the captured step's only: a row without a stop sequence
      by the column before it ends there (TRUNCATED, one token short of max_new_tokens). Also
      records each generated token's policy entropy (`SampleOutput.entropy`). () = off.
    capture_temperature: divides the logits of `capture_log_probs` (not of the draw).
  """

  max_new_tokens: int = 256
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  repetition_penalty: float = 1.0
  eos_ids: tuple[int, ...] = ()
  stop_sequences: tuple[tuple[int, ...], ...] = ()
  pad_id: int = 0
  prompt_buckets: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
  extra_tokens_after_stop: int = 0
  share_prompt_cache: bool = True
  cache_dtype: str | None = None
  max_search_iters: int = 64
  vocab_chunk: int = 0
  replicate_vocab: bool = True
  capture_ids: tuple[int, ...] = ()
  capture_temperature: float = 1.0

  def __post_init__(self):
    # Normalise lists to tuples so the config stays hashable.
    object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
    object.__setattr__(self, "capture_ids", tuple(int(i) for i in self.capture_ids))
    object.__setattr__(self, "stop_sequences",
                       tuple(tuple(int(t) for t in s) for s in self.stop_sequences))
    object.__setattr__(self, "prompt_buckets", tuple(sorted(int(b) for b in self.prompt_buckets)))
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
    if not self.greedy and not self.temperature > 0:
      raise ValueError(f"temperature={self.temperature} must be > 0 (use greedy=True for argmax)")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
    if not self.repetition_penalty > 0:
      raise ValueError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1.0 = off)")
    if any(len(s) == 0 for s in self.stop_sequences):
      raise ValueError("stop_sequences contains an empty sequence")
    if self.extra_tokens_after_stop < 0:
      raise ValueError(f"extra_tokens_after_stop={self.extra_tokens_after_stop} must be >= 0")
    if not self.prompt_buckets or min(self.prompt_buckets) < 1:
      raise ValueError(f"prompt_buckets={self.prompt_buckets} must be positive lengths")
    if self.capture_ids and (not self.stop_sequences or self.extra_tokens_after_stop < 1):
      raise ValueError("capture_ids needs stop_sequences and extra_tokens_after_stop >= 1 (the "
                       "captured step is the first one after a stop sequence)")
    if not self.capture_temperature > 0:
      raise ValueError(f"capture_temperature={self.capture_temperature} must be > 0")

  def replace(self, **kw) -> "SamplingConfig":
    return dataclasses.replace(self, **kw)


class SampleOutput(NamedTuple):
  """Result of `sample` for R = B * num_samples rows; row i*n + j is sample j of prompt i.

  tokens [R, M] int32: generated tokens only, pad_id after the row ended.
  lengths [R] int32: generated tokens kept (stop sequence / EOS / extra tokens included).
  status [R] int32: STOP_SEQUENCE (0), EOS (1) or TRUNCATED (2).
  stop_lengths [R] int32: tokens up to and including the stop sequence (0 if none); equals
    lengths unless extra_tokens_after_stop > 0.
  sampling_log_probs [R, M] f32: log-prob of each token under the distribution it was drawn
    from (temperature, top-k, top-p applied and renormalised; 0 when greedy); 0 after the end.
  policy_log_probs [R, M] f32: log softmax of the untempered logits at each token; 0 after the end.
  prompt_tokens [R, Pb] int32, prompt_mask [R, Pb] bool: the bucketed (left-padded) prompt of
    each row; `scoring_inputs` concatenates them with the generated tokens.
  prompt_index [R] int32: i, the prompt (input row) of each output row.
  sample_index [R] int32: j, the sample number within the group.
  capture_log_probs [R, K] f32 (config.capture_ids, else None): log softmax(logits /
    capture_temperature)[capture_ids] at the first step after the row's stop sequence (the
    logits that predict the token after it); 0 for rows without a stop sequence.
  entropy [R, M] f32 (config.capture_ids, else None): the entropy of the untempered policy at
    each generated token's step (the distribution policy_log_probs reads); 0 after the end.
  """
  tokens: Array
  lengths: Array
  status: Array
  stop_lengths: Array
  sampling_log_probs: Array
  policy_log_probs: Array
  prompt_tokens: Array
  prompt_mask: Array
  prompt_index: Array
  sample_index: Array
  capture_log_probs: Array | None = None
  entropy: Array | None = None


# ---------------------------------------------------------------------------------------------
# Sampling from logits (exact top-p without a sort)


def _vocab_chunk(v: int, want: int = 0) -> int:
  """A divisor of V for the two-level inverse CDF (near sqrt(V) unless `want` divides V)."""
  if want and v % want == 0:
    return want
  divisors = [d for i in range(1, math.isqrt(v) + 1) if v % i == 0 for d in (i, v // i)]
  return min(divisors, key=lambda d: (d < min(32, v), abs(d - math.sqrt(v))))


def _prefix_sum(x: Array) -> Array:
  """Inclusive prefix sum over the last axis via a triangular matmul (XLA:CPU cumsum is slow)."""
  n = x.shape[-1]
  tri = jnp.triu(jnp.ones((n, n), x.dtype))  # tri[i, j] = 1 if i <= j
  return jnp.matmul(x, tri, precision=jax.lax.Precision.HIGHEST)


def _inverse_cdf(w: Array, u: Array, chunk: int) -> tuple[Array, Array]:
  """Index drawn with probability w / sum(w) per row, and log(sum(w)).

  w [R, V] >= 0 (zero = excluded), u [R] uniform in [0, 1). Two levels: chunk totals, then the
  chosen chunk, so no prefix sum over the full vocabulary is needed.
  """
  r, v = w.shape
  nc = v // chunk
  wc = w.reshape(r, nc, chunk)
  chunk_cum = _prefix_sum(wc.sum(-1))  # [R, nc]
  total = chunk_cum[:, -1]
  target = u * total
  j = jnp.minimum(jnp.sum(chunk_cum <= target[:, None], axis=-1), nc - 1)
  # Never land on an empty trailing chunk because of rounding: take the last nonempty one.
  nonempty = wc.sum(-1) > 0
  last_nonempty = nc - 1 - jnp.argmax(nonempty[:, ::-1], axis=-1)
  j = jnp.minimum(j, last_nonempty)
  before = jnp.where(j > 0, jnp.take_along_axis(chunk_cum, jnp.maximum(j - 1, 0)[:, None], 1)[:, 0],
                     0.0)
  row = jnp.take_along_axis(wc, j[:, None, None], axis=1)[:, 0]  # [R, chunk]
  cum = _prefix_sum(row)
  k = jnp.sum(cum <= (target - before)[:, None], axis=-1)
  last_pos = chunk - 1 - jnp.argmax((row > 0)[:, ::-1], axis=-1)
  k = jnp.minimum(k, last_pos)
  return j * chunk + k, jnp.log(total)


def _top_chunks(x: Array, k: int, chunk: int) -> Array:
  """Candidates [R, k * chunk] that hold the k largest values of x [R, V] (x itself when
  `chunk` is 0 or the vocabulary has at most k chunks): the k chunks of `chunk` consecutive
  entries with the largest maxima (the last chunk padded with -inf)."""
  r, v = x.shape
  n = -(-v // chunk) if chunk else 0
  if n <= k:
    return x
  if n * chunk > v:
    x = jnp.pad(x, ((0, 0), (0, n * chunk - v)), constant_values=-jnp.inf)
  x = x.reshape(r, n, chunk)
  top = jax.lax.top_k(x.max(-1), k)[1]  # [R, k]
  return jnp.take_along_axis(x, top[:, :, None], axis=1).reshape(r, k * chunk)


def _nucleus_threshold(e: Array, z: Array, top_p: float, max_iters: int,
                       finish_k: int = 32, finish_after: int = 10, finish_chunk: int = 32
                       ) -> Array:
  """tau [R] with {e >= tau} the top-p nucleus. e = exp(l - max l) [R, V] (max exactly 1).

  Safeguarded Illinois search on the probability threshold; each iteration is one masked-sum
  pass over the vocabulary. Invariant: M(lo) >= target > M(hi) with M(t) = sum(e[e >= t]); a
  row is resolved once [lo, hi) holds one element or one float value. After `finish_after`
  passes the search stops once every unresolved row's bracket holds at most `finish_k` elements
  (they weigh >= lo each, so (M(lo) - M(hi)) / lo bounds their count): one `top_k` then lists
  them in order and the threshold is the largest of them whose mass M(hi) + (their sum down to
  it) reaches the target. The listing is two-level: the `finish_k` vocabulary chunks of
  `finish_chunk` tokens with the largest in-bracket maxima hold the `finish_k` largest
  in-bracket values (a chunk left out has its maximum, so all its values, at most the k-th
  chunk maximum, which is at most the k-th largest value), so `top_k` runs over
  finish_k x finish_chunk candidates instead of the vocabulary (`finish_chunk=0`: one `top_k`
  over the vocabulary). `benchmarks/top_p.py` times the search with and without the finish, and
  both finishes, on 64 x 32k rows (docs/sampler.md).
  """
  bits = lambda x: jax.lax.bitcast_convert_type(x, jnp.int32)
  floats = lambda b: jax.lax.bitcast_convert_type(b, jnp.float32)
  target = top_p * z
  one_up = jnp.nextafter(jnp.float32(1), jnp.float32(2))
  small = target <= 1.0  # the top token alone reaches top_p: M(1) >= 1 >= target
  state = dict(lo=jnp.where(small, jnp.float32(1), jnp.float32(0)), hi=jnp.full_like(z, one_up),
               m_lo=z, m_hi=jnp.zeros_like(z), w_lo=jnp.ones_like(z), w_hi=jnp.ones_like(z),
               side=jnp.zeros(z.shape, jnp.int32), target=target)
  finish_k = min(finish_k, e.shape[-1])

  def resolved(search):
    # two elements weigh >= 2 lo
    one_element = (search["m_lo"] - search["m_hi"]) < 1.5 * search["lo"]
    one_value = bits(search["hi"]) - bits(search["lo"]) <= 1
    return one_element | one_value

  def few(search):  # at most finish_k elements in [lo, hi)
    return (search["m_lo"] - search["m_hi"]) < finish_k * search["lo"]

  def step(e, it, search):
    lo, hi, m_lo, m_hi, w_lo, w_hi, side, tgt = (search[k] for k in (
        "lo", "hi", "m_lo", "m_hi", "w_lo", "w_hi", "side", "target"))
    active = ~resolved(search)
    a = (m_lo - tgt) * w_lo
    b = (tgt - m_hi) * w_hi
    guess = lo + a / jnp.maximum(a + b, 1e-30) * (hi - lo)
    # Every 4th iteration after the 12th, bisect in float bits: guarantees termination.
    mid_bits = bits(lo) + (bits(hi) - bits(lo)) // 2
    t_bits = jnp.where((it >= 12) & (it % 4 == 3), mid_bits, bits(guess))
    t = floats(jnp.clip(t_bits, bits(lo) + 1, bits(hi) - 1))
    m = jnp.sum(jnp.where(e >= t[:, None], e, 0.0), axis=-1)
    ok = m >= tgt
    up_lo, up_hi = active & ok, active & ~ok
    side = jnp.where(up_lo, jnp.maximum(side, 0) + 1,
                     jnp.where(up_hi, jnp.minimum(side, 0) - 1, side))
    w_hi = jnp.where(up_lo, jnp.where(side >= 2, w_hi * 0.5, 1.0), jnp.where(up_hi, 1.0, w_hi))
    w_lo = jnp.where(up_hi, jnp.where(side <= -2, w_lo * 0.5, 1.0), jnp.where(up_lo, 1.0, w_lo))
    return dict(lo=jnp.where(up_lo, t, lo), hi=jnp.where(up_hi, t, hi),
                m_lo=jnp.where(up_lo, m, m_lo), m_hi=jnp.where(up_hi, m, m_hi), w_lo=w_lo,
                w_hi=w_hi, side=side, target=tgt)

  def cond(c):  # the finish replaces only the slow rows' tail (a top_k costs ~6 passes)
    it, search = c
    return (it < max_iters) & ~jnp.all(resolved(search) | (few(search) & (it >= finish_after)))

  _, search = jax.lax.while_loop(cond, lambda c: (c[0] + 1, step(e, c[0], c[1])),
                             (jnp.int32(0), state))

  def finish(search):
    lo, hi = search["lo"], search["hi"]
    x = jnp.where((e >= lo[:, None]) & (e < hi[:, None]), e, -1.0)  # -1 = outside [lo, hi)
    cand = jax.lax.top_k(_top_chunks(x, finish_k, finish_chunk), finish_k)[0]  # descending
    # M(c_j) >= M(hi) + c_1 + ... + c_j, with equality unless c_j ties with c_{j+1}; the first
    # j that reaches the target gives the same threshold value either way.
    m_at = search["m_hi"][:, None] + _prefix_sum(jnp.maximum(cand, 0.0))
    ok = (m_at >= search["target"][:, None]) & (cand >= 0)
    tau = jnp.take_along_axis(cand, jnp.argmax(ok, axis=-1)[:, None], 1)[:, 0]
    return jnp.where(few(search) & ~resolved(search) & jnp.any(ok, axis=-1), tau, lo)

  return jax.lax.cond(jnp.all(resolved(search)), lambda search: search["lo"], finish, search)


def _argmax(x: Array, m: Array) -> Array:
  """`jnp.argmax(x, axis=-1)` of x [R, V] (the first maximum; the first NaN in a row that has
  one) given m, x's row maxima, as three vectorised passes: XLA:CPU's argmax is a variadic
  reduce, several times slower on the sampler's [64, 32k] logits (`benchmarks/top_p.py` times
  both)."""
  v = x.shape[-1]
  nan = jnp.isnan(x)
  hit = jnp.where(jnp.any(nan, axis=-1, keepdims=True), nan, x == m[:, None])
  first = jnp.min(jnp.where(hit, jnp.arange(v, dtype=jnp.float32), float(v)), axis=-1)
  return first.astype(jnp.int32)  # float32 holds every index below 2**24 exactly


def sample_from_logits(logits: Array, u: Array, cfg: SamplingConfig
                       ) -> tuple[Array, Array, Array]:
  """One token per row from float32 logits [R, V] and uniforms u [R] in [0, 1).

  Returns (tokens [R] int32, sampling_log_probs [R], policy_log_probs [R]).
  """
  logits = logits.astype(jnp.float32)
  r, v = logits.shape
  rows = jnp.arange(r)
  m0 = jnp.max(logits, axis=-1)

  def policy_lp(tok, lse):
    return logits[rows, tok] - lse

  if cfg.greedy:
    tok = _argmax(logits, m0)
    lse = m0 + jnp.log(jnp.sum(jnp.exp(logits - m0[:, None]), axis=-1))
    return tok, jnp.zeros((r,), jnp.float32), policy_lp(tok, lse)

  scaled = logits / cfg.temperature if cfg.temperature != 1.0 else logits
  m = m0 / cfg.temperature if cfg.temperature != 1.0 else m0  # max commutes with t > 0
  e = jnp.exp(scaled - m[:, None])
  z = jnp.sum(e, axis=-1)
  if cfg.temperature == 1.0:
    lse = m0 + jnp.log(z)
  else:
    lse = m0 + jnp.log(jnp.sum(jnp.exp(logits - m0[:, None]), axis=-1))

  if cfg.top_k and cfg.top_k < v:
    # Exact top-k, then top-p within the k candidates (sorted by lax.top_k).
    vals, idx = jax.lax.top_k(scaled, cfg.top_k)
    p = jnp.exp(vals - vals[:, :1])
    if cfg.top_p < 1.0:
      cum = _prefix_sum(p)
      keep = (cum - p) < cfg.top_p * cum[:, -1:]  # mass before the token is short of top_p
      p = jnp.where(keep, p, 0.0)
    cum = _prefix_sum(p)
    k = jnp.sum(cum <= (u * cum[:, -1])[:, None], axis=-1)
    last_pos = cfg.top_k - 1 - jnp.argmax((p > 0)[:, ::-1], axis=-1)
    k = jnp.minimum(k, last_pos)
    tok = jnp.take_along_axis(idx, k[:, None], 1)[:, 0].astype(jnp.int32)
    slp = jnp.log(p[rows, k]) - jnp.log(cum[:, -1])
    return tok, slp, policy_lp(tok, lse)

  if cfg.top_p < 1.0:
    tau = _nucleus_threshold(e, z, cfg.top_p, cfg.max_search_iters)
    w = jnp.where(e >= tau[:, None], e, 0.0)
  else:
    w = e
  tok, log_total = _inverse_cdf(w, u, _vocab_chunk(v, cfg.vocab_chunk))
  tok = tok.astype(jnp.int32)
  slp = (scaled[rows, tok] - m) - log_total
  return tok, slp, policy_lp(tok, lse)


# ---------------------------------------------------------------------------------------------
# The sampler


def _stop_match(window: Array, stop_sequences: tuple[tuple[int, ...], ...]) -> Array:
  """[R] bool: the last generated tokens (window [R, W], newest last) end with a stop sequence."""
  width = window.shape[1]
  hit = jnp.zeros(window.shape[:1], bool)
  for seq in stop_sequences:
    tail = window[:, width - len(seq):]
    hit = hit | jnp.all(tail == jnp.asarray(seq, window.dtype)[None, :], axis=-1)
  return hit


class _State(NamedTuple):
  i: Array            # index of the next token to sample
  last_tok: Array     # [R] the token sampled last (fed to the model next)
  cache: qwen3.DecodeCache
  tokens: Array       # [R, M]
  slp: Array          # [R, M]
  plp: Array          # [R, M]
  done: Array         # [R] bool
  lengths: Array      # [R]
  status: Array       # [R]
  stop_lengths: Array  # [R]
  extra_left: Array   # [R] -1 = no stop sequence seen yet
  window: Array       # [R, W] last W generated tokens (-1 = none)
  seen: Array         # [R, V] bool tokens in the prompt or output (repetition penalty), else [R, 1]
  capture: Array      # [R, K] f32 capture_log_probs ([R, 0] without capture_ids)
  ent: Array          # [R, M] f32 entropy ([R, 0] without capture_ids)


def _record_capture(state: _State, i: Array, logits: Array, cfg: SamplingConfig) -> _State:
  """The `capture_ids` log-probs of rows whose stop sequence ended at token i - 1 (their
  first extra step is this one) and the entropy of token i's distribution (running rows)."""
  if not cfg.capture_ids:
    return state
  active = ~state.done
  first_extra = active & (state.extra_left == cfg.extra_tokens_after_stop)
  x = logits.astype(jnp.float32) / cfg.capture_temperature
  lp = (jnp.take(x, jnp.asarray(cfg.capture_ids), axis=-1)
        - jax.nn.logsumexp(x, axis=-1, keepdims=True))
  capture = jnp.where(first_extra[:, None], lp, state.capture)
  ent = jnp.where(active, obj.token_entropy(logits), 0.0)
  return state._replace(capture=capture,
                        ent=jax.lax.dynamic_update_slice(state.ent, ent[:, None], (0, i)))


def _emit(state: _State, i: Array, tok: Array, slp: Array, plp: Array,
          cfg: SamplingConfig) -> _State:
  """Records token i of every row that is still running and updates its stop state."""
  active = ~state.done
  tok_w = jnp.where(active, tok, cfg.pad_id).astype(jnp.int32)
  tokens = jax.lax.dynamic_update_slice(state.tokens, tok_w[:, None], (0, i))
  slp_all = jax.lax.dynamic_update_slice(state.slp, jnp.where(active, slp, 0.0)[:, None], (0, i))
  plp_all = jax.lax.dynamic_update_slice(state.plp, jnp.where(active, plp, 0.0)[:, None], (0, i))
  lengths = jnp.where(active, i + 1, state.lengths)
  in_extra = state.extra_left >= 0
  if cfg.stop_sequences:
    window = jnp.concatenate([state.window[:, 1:], tok[:, None].astype(state.window.dtype)], axis=1)
    new_stop = active & ~in_extra & _stop_match(window, cfg.stop_sequences)
  else:
    window = state.window
    new_stop = jnp.zeros_like(active)
  if cfg.eos_ids:
    is_eos = jnp.any(tok[:, None] == jnp.asarray(cfg.eos_ids, tok.dtype)[None, :], axis=-1)
  else:
    is_eos = jnp.zeros_like(active)
  extra_left = jnp.where(active & in_extra, state.extra_left - 1, state.extra_left)
  extra_done = active & in_extra & (extra_left <= 0)
  extra_left = jnp.where(new_stop, cfg.extra_tokens_after_stop, extra_left)
  stop_done = new_stop & (cfg.extra_tokens_after_stop == 0)
  eos_done = active & is_eos
  status = jnp.where(new_stop, STOP_SEQUENCE, state.status)
  status = jnp.where(eos_done & ~in_extra & ~new_stop, EOS, status)
  stop_lengths = jnp.where(new_stop, i + 1, state.stop_lengths)
  done = state.done | stop_done | extra_done | eos_done
  return state._replace(tokens=tokens, slp=slp_all, plp=plp_all, done=done, lengths=lengths,
                     status=status, stop_lengths=stop_lengths, extra_left=extra_left,
                     window=window, last_tok=tok.astype(jnp.int32))


def _sample_impl(params, prompt_tokens, prompt_mask, key, prompt_ids, *, graphdef,
                 cfg: SamplingConfig, n: int, mesh: Mesh | None, rules) -> SampleOutput:
  """Traced body of `sample` (prompts already bucketed)."""
  model = nnx.merge(graphdef, params)
  mcfg: qwen3.Qwen3Config = model.cfg
  b = prompt_tokens.shape[0]
  r, m = b * n, cfg.max_new_tokens
  mcfg.check_length(prompt_tokens.shape[1] + m)
  con = lambda x, axes: shd.constrain_to(x, mesh, axes, rules)
  rep = lambda x: jnp.repeat(x, n, axis=0)

  # Prefill each prompt once; logits only at the last position (left padding puts every
  # prompt's last real token there).
  prompt_mask = prompt_mask.astype(bool)
  hidden, kv = model(prompt_tokens, qwen3.positions_from_mask(prompt_mask), prompt_mask,
                     return_kv=True)
  logits0 = rep(model.logits(hidden[:, -1]))
  cache = qwen3.decode_cache(kv, prompt_mask, r, max(m - 1, 1), cfg.cache_dtype or mcfg.dtype,
                             share_prompt=cfg.share_prompt_cache,
                             constrain=con)
  del kv
  weights = qwen3.decode_weights(model)
  prompt_len_r = rep(jnp.sum(prompt_mask, axis=-1).astype(jnp.int32))

  # Per-row keys from (key, prompt id, sample number): independent of the row's batch position.
  pid = rep(prompt_ids.astype(jnp.int32))
  sid = jnp.tile(jnp.arange(n, dtype=jnp.int32), b)
  row_keys = jax.vmap(lambda p, j: jax.random.fold_in(jax.random.fold_in(key, p), j))(pid, sid)

  def uniforms(i):
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, i)))(row_keys)

  penalty = cfg.repetition_penalty != 1.0

  def draw(logits, i, seen):
    if cfg.replicate_vocab:
      logits = con(logits, axes=("batch", None))
    if not penalty:
      return sample_from_logits(logits, uniforms(i), cfg)
    raw = logits.astype(jnp.float32)
    pen = jnp.where(seen, jnp.where(raw > 0, raw / cfg.repetition_penalty,
                                    raw * cfg.repetition_penalty), raw)
    tok, slp, _ = sample_from_logits(pen, uniforms(i), cfg)
    plp = jnp.take_along_axis(raw, tok[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(raw, axis=-1)
    return tok, slp, plp

  def mark(seen, tok):
    if not penalty:
      return seen
    return seen.at[jnp.arange(r), tok].set(True)

  if penalty:
    seen0 = jnp.zeros((r, mcfg.vocab_size), bool).at[
        jnp.arange(r)[:, None], rep(prompt_tokens)].max(rep(prompt_mask))
  else:
    seen0 = jnp.zeros((r, 1), bool)

  width = max((len(q) for q in cfg.stop_sequences), default=1)
  k_cap = len(cfg.capture_ids)
  state = _State(
      i=jnp.int32(0), last_tok=jnp.zeros((r,), jnp.int32), cache=cache,
      tokens=jnp.full((r, m), cfg.pad_id, jnp.int32), slp=jnp.zeros((r, m), jnp.float32),
      plp=jnp.zeros((r, m), jnp.float32), done=jnp.zeros((r,), bool),
      lengths=jnp.zeros((r,), jnp.int32), status=jnp.full((r,), TRUNCATED, jnp.int32),
      stop_lengths=jnp.zeros((r,), jnp.int32), extra_left=jnp.full((r,), -1, jnp.int32),
      window=jnp.full((r, width), -1, jnp.int32), seen=seen0,
      capture=jnp.zeros((r, k_cap), jnp.float32),
      ent=jnp.zeros((r, m if k_cap else 0), jnp.float32))
  state = _record_capture(state, jnp.int32(0), logits0, cfg)
  tok, slp, plp = draw(logits0, 0, state.seen)
  state = _emit(state, jnp.int32(0), tok, slp, plp, cfg)
  if cfg.capture_ids and m <= 2:  # the last column is for captured steps only (as below)
    state = state._replace(done=state.done | (state.extra_left < 0))
  state = state._replace(i=jnp.int32(1), seen=mark(state.seen, tok))

  if m == 1:  # nothing left to decode
    return _finish(state, prompt_tokens, prompt_mask, rep, b, sid)

  def cond(state):
    return (state.i < m) & ~jnp.all(state.done)

  def body(state):
    # Token i - 1 is fed at the row's next position into own slot i - 1; token i is drawn.
    logits, cache = qwen3.decode_step(mcfg, weights, state.last_tok, prompt_len_r + state.i - 1,
                                      state.cache, state.i - 1)
    cache = qwen3.constrain_cache(cache, con)
    state = _record_capture(state._replace(cache=cache), state.i, logits, cfg)
    tok, slp, plp = draw(logits, state.i, state.seen)
    state = _emit(state, state.i, tok, slp, plp, cfg)
    if cfg.capture_ids:  # the last column is for captured steps only
      state = state._replace(done=state.done | ((state.i >= m - 2) & (state.extra_left < 0)))
    return state._replace(i=state.i + 1, seen=mark(state.seen, tok))

  state = jax.lax.while_loop(cond, body, state)
  return _finish(state, prompt_tokens, prompt_mask, rep, b, sid)


def _finish(state: _State, prompt_tokens, prompt_mask, rep, b, sid) -> SampleOutput:
  return SampleOutput(
      tokens=state.tokens, lengths=state.lengths, status=state.status,
      stop_lengths=state.stop_lengths,
      sampling_log_probs=state.slp, policy_log_probs=state.plp,
      prompt_tokens=rep(prompt_tokens), prompt_mask=rep(prompt_mask),
      prompt_index=rep(jnp.arange(b, dtype=jnp.int32)), sample_index=sid,
      capture_log_probs=state.capture if state.capture.shape[1] else None,
      entropy=state.ent if state.capture.shape[1] else None)


def _rules_key(rules) -> tuple:
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in rules.items()))


@functools.lru_cache(maxsize=64)
def _compiled_sampler(graphdef, cfg: SamplingConfig, n: int, mesh: Mesh | None, rules_key: tuple):
  """One jitted sampler per (model structure, config, n, mesh); jit caches shapes under it."""
  rules = dict(rules_key)
  impl = functools.partial(_sample_impl, graphdef=graphdef, cfg=cfg, n=n, mesh=mesh, rules=rules)

  def run(params, prompt_tokens, prompt_mask, key, prompt_ids):
    if mesh is None:
      return impl(params, prompt_tokens, prompt_mask, key, prompt_ids)
    with shd.activation_sharding(mesh, rules):  # model code constrains activations while tracing
      return impl(params, prompt_tokens, prompt_mask, key, prompt_ids)

  return jax.jit(run)


def sampler_program(graphdef: nnx.GraphDef, config: SamplingConfig, *, num_samples: int = 1,
                    mesh: Mesh | None = None, rules=shd.DEFAULT_RULES):
  """The jitted sampler that `sample` runs: `fn(params, prompt_tokens, prompt_mask, key,
  prompt_ids) -> SampleOutput`, memoised per (model structure, config, n, mesh, rules).

  For ahead-of-time work: `fn.lower(...)` with arrays or `jax.ShapeDtypeStruct`s (shardings
  included: `tools/plan.py` compiles for a TPU topology this way) shaped as `prepare_prompts`
  leaves them, then `.compile()` for `memory_analysis()`. With concrete arrays, `lower` below
  prepares them exactly as `sample` does.
  """
  return _compiled_sampler(graphdef, config, int(num_samples), mesh, _rules_key(rules))


def prepare_prompts(tokens: np.ndarray, mask: np.ndarray, cfg: SamplingConfig
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Checks left padding and cuts/left-pads the prompts to their bucket width; padding
  positions get `cfg.pad_id`. Returns int32 tokens and bool mask, `[B, bucket width]`."""
  if tokens.ndim != 2 or tokens.shape != mask.shape:
    raise ValueError(f"prompt_tokens {tokens.shape} and prompt_mask {mask.shape} must be equal "
                     f"[batch, length] shapes")
  if tokens.shape[0] == 0:
    raise ValueError("empty batch of prompts")
  not_left = np.nonzero(np.any(mask[:, :-1] & ~mask[:, 1:], axis=1))[0]
  if not_left.size:
    raise ValueError(f"prompt_mask rows {not_left[:5].tolist()} are not left-padded (padding must "
                     f"come before the first real token)")
  longest = max(int(mask.sum(1).max()), 1)
  width = layout.bucket_length(longest, cfg.prompt_buckets, overflow="multiple")
  cur = tokens.shape[1]
  if cur >= width:
    tokens, mask = tokens[:, cur - width:], mask[:, cur - width:]
  else:
    tokens = layout.widen_left(tokens, width, cfg.pad_id)
    mask = layout.widen_left(mask, width, False)
  tokens = np.where(mask, tokens, cfg.pad_id).astype(np.int32)
  return tokens, mask


def sample(graphdef: nnx.GraphDef, params: nnx.State, prompt_tokens, prompt_mask, key: Array,
           config: SamplingConfig, *, num_samples: int = 1, mesh: Mesh | None = None,
           prompt_ids=None, rules=shd.DEFAULT_RULES) -> SampleOutput:
  """Samples `num_samples` continuations of each left-padded prompt.

  Args:
    graphdef, params: the Qwen3 model (`nnx.split`); params may be sharded over `mesh`.
    prompt_tokens: [B, P] int token ids, left-padded. prompt_mask: [B, P] bool (True = token).
    key: PRNG key. Row keys are fold_in(fold_in(key, prompt_ids[i]), j) and step keys fold in
      the token index, so a prompt's samples depend only on (key, its id, j), not on its batch
      position or on the other rows.
    config: SamplingConfig (static: one compilation per distinct config, bucket and batch size).
    num_samples: n samples per prompt; output row i*n + j is sample j of prompt i.
    mesh: optional mesh: batch rows over (data, fsdp), parameters as placed by the caller,
      the KV cache with an explicit sharding, activations constrained by the logical rules.
    prompt_ids: optional [B] ints identifying the prompts for the keys (default arange(B)).

  Returns:
    SampleOutput (see its docstring). Host arrays are not fetched; call np.asarray as needed.
  """
  fn, args = _program_and_args(graphdef, params, prompt_tokens, prompt_mask, key, config,
                               num_samples, mesh, prompt_ids, rules)
  return fn(*args)


def lower(graphdef: nnx.GraphDef, params: nnx.State, prompt_tokens, prompt_mask, key: Array,
          config: SamplingConfig, *, num_samples: int = 1, mesh: Mesh | None = None,
          prompt_ids=None, rules=shd.DEFAULT_RULES) -> tuple[jax.stages.Lowered, tuple]:
  """`sample`'s program for these arguments, lowered and not yet compiled, and the prepared
  arguments it takes. `lowered.compile()` gives the memory analysis and a callable:
  `compiled(*args)` returns what `sample` would, and the program is compiled once however it
  is then run (it is the same jitted function `sample` calls)."""
  fn, args = _program_and_args(graphdef, params, prompt_tokens, prompt_mask, key, config,
                               num_samples, mesh, prompt_ids, rules)
  return fn.lower(*args), args


def _program_and_args(graphdef, params, prompt_tokens, prompt_mask, key, config, num_samples,
                      mesh, prompt_ids, rules):
  """The jitted sampler and its arguments: n checked, prompts bucketed, ids checked, inputs
  placed."""
  n = int(num_samples)
  if n < 1:
    raise ValueError(f"num_samples={num_samples} must be >= 1")
  tokens, mask = prepare_prompts(np.asarray(prompt_tokens), np.asarray(prompt_mask).astype(bool),
                                 config)
  b = tokens.shape[0]
  ids = np.arange(b, dtype=np.int32) if prompt_ids is None else np.asarray(prompt_ids, np.int32)
  if ids.shape != (b,):
    raise ValueError(f"prompt_ids has shape {ids.shape}; expected ({b},)")
  fn = sampler_program(graphdef, config, num_samples=n, mesh=mesh, rules=rules)
  if mesh is not None:
    batch_axes = shd.logical_to_spec(("batch",), rules)[0]
    divides = b % shd._axis_size(mesh, batch_axes) == 0
    place = lambda x: shd.put_global(
        x, shd.batch_sharding(mesh, x.ndim, rules) if divides else shd.replicated(mesh))
    tokens, mask, ids = place(tokens), place(mask), place(ids)
    key = shd.put_global(key, shd.replicated(mesh))
  return fn, (params, tokens, mask, key, ids)


def scoring_inputs(out: SampleOutput) -> tuple[Array, Array, Array]:
  """Teacher-forcing inputs for `models.score_sequences` from a SampleOutput.

  Returns tokens [R, Pb + M] (bucketed prompt then the kept generated tokens, pad after),
  mask [R, Pb + M] bool and score_positions [R]: the position of the last stop-sequence token
  (rows without a stop sequence: the last kept token), whose logits predict the score token.
  """
  m = out.tokens.shape[1]
  pb = out.prompt_tokens.shape[1]
  gen_mask = jnp.arange(m)[None, :] < out.lengths[:, None]
  tokens = jnp.concatenate([out.prompt_tokens, out.tokens.astype(out.prompt_tokens.dtype)], 1)
  mask = jnp.concatenate([out.prompt_mask.astype(bool), gen_mask], axis=1)
  end = jnp.where(out.stop_lengths > 0, out.stop_lengths, out.lengths)
  return tokens, mask, (pb + jnp.maximum(end, 1) - 1).astype(jnp.int32)
