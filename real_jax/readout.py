"""Sample a CoT and read the judge's score: the layer that training and evaluation share.

  prompts [P, Lp] --`sample_cots`--> n CoTs per prompt, each stopped at the delimiter (or EOS, or
  max tokens); rows i*n .. i*n+n-1 are the group of prompt i
  --`build_sequences`--> prompt ⊕ CoT (delimiter included) as one sequence; the score position
  is the last delimiter token, whose logits predict the score token
  --`run_scoring` with `make_score_fn`--> a no-grad teacher-forced pass
  (`models.score_sequences`): y_hat = sum_k v_k pi(k), log pi(y*), the score token drawn as the
  sampler would draw it, and the CoT's token log-probs.

`read_batch` puts the three together with the evaluation rules (one CoT per item, both readouts,
what to do with a CoT that never reached the delimiter); the RL rollout (`train/rl.py`) uses the
parts directly. See docs/architecture.md for where this sits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from real_jax import layout
from real_jax import objectives as obj
from real_jax import sampling
from real_jax import sharding as shd
from real_jax.judge.scores import ScoreTokens
from real_jax.models import CandidatePaths, score_candidates, score_sequences

__all__ = ["READOUTS", "INVALID_READOUTS", "STATUS_NAMES", "SamplerSettings", "Samples",
    "sample_cots", "sampling_config", "Sequences", "build_sequences", "append_delimiter",
    "make_score_fn", "Scores", "run_scoring", "scores_from_samples", "target_token_ids", "EvalSettings", "Reading",
    "apply_invalid_rule", "read_batch", "vote", "row_uniforms", "candidate_log_probs"]

READOUTS = ("cot", "direct")  # a CoT before the score | the delimiter right after the prompt
INVALID_READOUTS = ("force", "midpoint")  # how a CoT without a delimiter gets a prediction
# The sampler's row status (sampling.STOP_SEQUENCE / EOS / TRUNCATED) by name, for reports.
STATUS_NAMES = {sampling.STOP_SEQUENCE: "delimiter", sampling.EOS: "eos_before_delimiter",
                sampling.TRUNCATED: "truncated"}


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """How CoTs are sampled (rollouts, evaluation, TRACT self-CoTs)."""
  max_new_tokens: int
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  greedy: bool = False
  repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the CoT


# ---------------------------------------------------------------------------------------------
# Sampling (adapter over real_jax.sampling)


@dataclasses.dataclass(frozen=True)
class Samples:
  """CoTs from `sample_cots`: host arrays over N = P * n rows, row i*n+j = sample j of prompt i."""
  prompt_tokens: np.ndarray  # [N, Lp] int32, left-padded to the prompts' bucket
  prompt_mask: np.ndarray  # [N, Lp] int32
  response: np.ndarray  # [N, R] int32, right-padded with pad_id; ends with the delimiter if found
  length: np.ndarray  # [N] int32 tokens kept: through the delimiter if found, else EOS / max
  found: np.ndarray  # [N] bool: the delimiter was reached
  eos: np.ndarray  # [N] bool: EOS before any delimiter
  truncated: np.ndarray  # [N] bool: neither
  # What the sampler read on the way (`sample_cots(..., capture_scores=True)`, else None):
  policy_lp: np.ndarray | None = None  # [N, R] log pi(token) at T = 1, 0 after `length`
  entropy: np.ndarray | None = None  # [N, R] the policy's entropy (T = 1) at each kept token
  score_log_probs: np.ndarray | None = None  # [N, K] log pi(k | x, c) after the delimiter
  next_token: np.ndarray | None = None  # [N] the token drawn after the delimiter
  next_token_lp: np.ndarray | None = None  # [N] its log pi at T = 1

  @classmethod
  def concatenate(cls, parts: Sequence[Samples], pad_id: int) -> Samples:
    """The rows of several sampling calls in order; prompts left-widened to the widest bucket."""
    if len(parts) == 1:
      return parts[0]
    width = max(p.prompt_tokens.shape[1] for p in parts)
    cols = {f.name: [getattr(p, f.name) for p in parts] for f in dataclasses.fields(cls)}
    cols["prompt_tokens"] = [layout.widen_left(x, width, pad_id) for x in cols["prompt_tokens"]]
    cols["prompt_mask"] = [layout.widen_left(x, width, 0) for x in cols["prompt_mask"]]
    return cls(**{k: None if v[0] is None else np.concatenate(v) for k, v in cols.items()})


def sample_cots(graphdef, params, prompt_tokens, prompt_mask, key, settings: SamplerSettings,
                score_tokens: ScoreTokens, *, num_samples: int, mesh: Mesh | None,
                pad_id: int, prompt_buckets: tuple[int, ...] | None = None,
                capture_scores: bool = False, score_temperature: float = 1.0,
                prompt_ids: np.ndarray | None = None) -> Samples:
  """n CoTs per prompt, stopped at the delimiter, as host arrays (`Samples`).

  Every tokenisation of the delimiter the parser accepts (`score_tokens.variants`) is a stop
  sequence, so the sampler's first stop is the parser's first delimiter.

  prompt_ids: [P] ids for the sampler's row keys (default: the prompts' positions; pass item ids
  to make an item's CoTs independent of its batch).

  capture_scores: also keep what the sampler computes on the way (`Samples.policy_lp`,
  `entropy`) and run one decode step after each delimiter: the score distribution at
  `score_temperature` (`score_log_probs`) and a token drawn from it as the sampler draws
  (`next_token`, `next_token_lp`), what `scores_from_samples` turns into a scoring pass's
  output. The CoTs are the same as without it (the extra step is drawn after them; the buffer
  is one token wider so a delimiter that ends at the token limit still gets its step).
  """
  cfg = sampling_config(settings, score_tokens, pad_id, prompt_buckets)
  m = settings.max_new_tokens
  if capture_scores:
    cfg = cfg.replace(max_new_tokens=m + 1, extra_tokens_after_stop=1,
                      capture_ids=tuple(score_tokens.token_ids), capture_temperature=score_temperature)
  out = sampling.sample(graphdef, params, np.asarray(prompt_tokens),
                        np.asarray(prompt_mask).astype(bool), key, cfg,
                        num_samples=num_samples, mesh=mesh, prompt_ids=prompt_ids)
  out = shd.to_host(out)
  status = np.asarray(out.status)
  stop_len = np.asarray(out.stop_lengths)
  # Within the first m tokens (the capture buffer's extra column is past the token limit).
  found = (status == sampling.STOP_SEQUENCE) & (stop_len <= m)
  eos = (status == sampling.EOS) & (np.asarray(out.lengths) <= m)
  truncated = ~found & ~eos
  keep = np.where(found, stop_len, np.minimum(np.asarray(out.lengths), m)).astype(np.int32)
  tokens = np.asarray(out.tokens)[:, :m]
  cols = np.arange(m)[None, :]
  kept = cols < keep[:, None]
  response = np.where(kept, tokens, pad_id).astype(np.int32)
  extra = {}
  if capture_scores:
    rows = np.arange(len(keep))
    after = np.minimum(keep, m)  # the column of the token drawn after the delimiter
    extra = dict(
        policy_lp=np.where(kept, np.asarray(out.policy_log_probs)[:, :m], 0.0).astype(np.float32),
        entropy=np.where(kept, np.asarray(out.entropy)[:, :m], 0.0).astype(np.float32),
        score_log_probs=np.where(found[:, None], np.asarray(out.capture_log_probs),
                                 0.0).astype(np.float32),
        next_token=np.where(found, np.asarray(out.tokens)[rows, after], pad_id).astype(np.int32),
        next_token_lp=np.where(found, np.asarray(out.policy_log_probs)[rows, after],
                               0.0).astype(np.float32))
  return Samples(prompt_tokens=np.asarray(out.prompt_tokens).astype(np.int32),
                 prompt_mask=np.asarray(out.prompt_mask).astype(np.int32),
                 response=response, length=keep, found=found, eos=eos, truncated=truncated,
                 **extra)


def sampling_config(settings: SamplerSettings, score_tokens: ScoreTokens, pad_id: int,
                     prompt_buckets=None) -> sampling.SamplingConfig:
  kw = dict(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
            top_p=settings.top_p, top_k=settings.top_k, greedy=settings.greedy,
            repetition_penalty=settings.repetition_penalty,
            eos_ids=(score_tokens.eos_id,),
            stop_sequences=tuple(tuple(v) for v in score_tokens.variants), pad_id=pad_id)
  if prompt_buckets:
    kw["prompt_buckets"] = tuple(prompt_buckets)
  return sampling.SamplingConfig(**kw)


# ---------------------------------------------------------------------------------------------
# Teacher-forced sequences


@dataclasses.dataclass(frozen=True)
class Sequences:
  """Rows for a teacher-forced pass: host arrays over N rows of L tokens."""
  tokens: np.ndarray  # [N, L] int32
  mask: np.ndarray  # [N, L] bool: padding only, nothing else is masked
  score_pos: np.ndarray  # [N] int32: the position whose logits predict the score token
  cot_mask: np.ndarray | None = None  # [N, L] f32: the kept response tokens (None: no CoT)


def build_sequences(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, response: np.ndarray,
                    length: np.ndarray, *, pad_id: int, extra: int = 1) -> Sequences:
  """prompt ⊕ response[:length] as one left/right-padded sequence of length Lp + R + extra.

  score_pos is the last kept response token (for a delimiter-stopped row the last delimiter
  token, whose logits predict the score); cot_mask marks the kept response tokens. `extra` free
  slots at the end leave room for a sampled score token (standard RL).
  """
  n, lp = prompt_tokens.shape
  r = response.shape[1]
  total = lp + r + extra
  tokens = np.full((n, total), pad_id, np.int32)
  tokens[:, :lp] = prompt_tokens
  cols = np.arange(r + extra)[None, :]
  resp_mask = cols < length[:, None]
  resp = np.full((n, r + extra), pad_id, np.int32)
  resp[:, :r] = response
  tokens[:, lp:] = np.where(resp_mask, resp, pad_id)
  mask = np.concatenate([prompt_mask.astype(bool), resp_mask], axis=1)
  cot_mask = np.concatenate([np.zeros((n, lp), np.float32), resp_mask.astype(np.float32)], 1)
  score_pos = (lp + np.maximum(length, 1) - 1).astype(np.int32)
  return Sequences(tokens=tokens, mask=mask, score_pos=score_pos, cot_mask=cot_mask)


def append_delimiter(prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                     delimiter: Sequence[int]) -> Sequences:
  """prompt ⊕ delimiter (no CoT: RAFT's direct readout): tokens [N, Lp + D], score_pos the last
  delimiter token, no cot_mask."""
  n = prompt_tokens.shape[0]
  d = np.tile(np.asarray(delimiter, np.int32)[None, :], (n, 1))
  tokens = np.concatenate([prompt_tokens, d], axis=1)
  mask = np.concatenate([prompt_mask.astype(bool), np.ones(d.shape, bool)], axis=1)
  return Sequences(tokens=tokens, mask=mask,
                   score_pos=np.full((n,), tokens.shape[1] - 1, np.int32))


# ---------------------------------------------------------------------------------------------
# No-grad scoring pass


@functools.lru_cache(maxsize=32)
def make_score_fn(graphdef, score_tokens: ScoreTokens, mesh: Mesh, *,
                  score_temperature: float = 1.0, renormalize: bool = False,
                  sample_temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  greedy: bool = False, response_width: int = 0):
  """Jitted no-grad scoring pass over a batch of sequences (memoised by its arguments, so
  evaluation and rollouts with the same settings share one compiled function).

  `response_width` > 0: `lp` only on the last `response_width` columns (the responses of
  `build_sequences`' layout; 0 before them), see `models.score_sequences`.

  `fn(params, batch)` with batch {tokens, mask, score_pos, target_id, probe, u} (u [N]: the
  uniform that draws row n's score token) returns
  {lp [N, L] (token log-probs at T=1), entropy [N, L] (the policy's entropy at T=1 at each
  column of lp, from the same chunked logits), y_hat [N], target_logp [N] (log pi(y*|x,c)),
  score_mass [N], score_probs [N, K] (pi(k|x,c) of each score token, renormalised or not as
  y_hat), sampled [N] (a token sampled at the score position), sampled_is_score [N],
  sampled_logp [N] and probe_logp [N] (log pi at T=1 of the sampled / the `probe` token)}.
  """
  draw_cfg = sampling.SamplingConfig(temperature=sample_temperature if not greedy else 1.0,
                                     top_p=top_p, top_k=top_k, greedy=greedy)
  spec, cands = obj.ScoreSpec.read(score_tokens), None
  if score_tokens.multi_token:
    if score_temperature != 1.0:
      raise ValueError(f"scores of several tokens are read at temperature 1, not "
                       f"{score_temperature} (rl.score_temperature)")
    cands = CandidatePaths.of(score_tokens)

  def fn(params, batch):
    with shd.activation_sharding(mesh):
      if cands is None:
        out = score_sequences(graphdef, params, batch["tokens"], batch["mask"],
                              batch["score_pos"], temperature=1.0,
                              response_width=response_width, with_entropy=True)
        logits = out.score_logits
        # The score token drawn as the sampler would have drawn it (temperature, top-k, top-p).
        tok, _, _ = sampling.sample_from_logits(logits, batch["u"], draw_cfg)
      else:
        out = score_candidates(graphdef, params, batch["tokens"], batch["mask"],
                               batch["score_pos"], cands, response_width=response_width,
                               with_entropy=True)
        logits = obj.candidate_logits(out.score_log_probs)  # [N, K + 1]: K scores, no score
        tok = _draw_candidate(out.score_log_probs, batch["u"], greedy)
      y_hat = obj.expected_score(logits, spec.ids, spec.values, renormalize=renormalize,
                                 temperature=score_temperature)
      tlp = obj.score_log_prob(logits, batch["target_id"], temperature=score_temperature)
      mass = obj.score_token_mass(logits, spec.ids, temperature=score_temperature)
      probs = jnp.exp(obj.score_token_log_probs(logits, spec.ids, renormalize=renormalize,
                                                temperature=score_temperature))
      hit = tok[:, None] == spec.ids[None, :]
      is_score = jnp.any(hit, axis=-1)
      value = jnp.where(is_score, spec.values[jnp.argmax(hit, axis=-1)], jnp.nan)
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # policy, T = 1
      at = lambda t: jnp.take_along_axis(logp, t[:, None].astype(jnp.int32), axis=-1)[:, 0]
      probe = at(batch["probe"]) if cands is None else jnp.zeros_like(y_hat)
      return {"lp": out.token_log_probs, "entropy": out.token_entropy, "y_hat": y_hat,
              "target_logp": tlp, "score_mass": mass, "score_probs": probs, "sampled": tok,
              "sampled_is_score": is_score, "sampled_value": value,
              "sampled_logp": at(tok), "probe_logp": probe}

  in_b = {k: shd.batch_sharding(mesh, nd) for k, nd in
          (("tokens", 2), ("mask", 2), ("score_pos", 1), ("target_id", 1), ("probe", 1),
           ("u", 1))}
  out_b = {"lp": shd.batch_sharding(mesh, 2), "entropy": shd.batch_sharding(mesh, 2),
           "score_probs": shd.batch_sharding(mesh, 2),
           **{k: shd.batch_sharding(mesh, 1) for k in (
      "y_hat", "target_logp", "score_mass", "sampled", "sampled_is_score", "sampled_value",
      "sampled_logp", "probe_logp")}}
  return jax.jit(fn, in_shardings=(None, in_b), out_shardings=out_b)


def _draw_candidate(score_log_probs, u, greedy: bool):
  """[N] the index of a score drawn from the scores' exact probabilities at T = 1 (K: no
  score, with the remaining mass), by inverse CDF with the uniforms `u`; greedy: the most
  probable score. Scores of several tokens are drawn whole, not token by token with top-p."""
  p = jnp.exp(score_log_probs.astype(jnp.float32))
  k = p.shape[-1]
  if greedy:
    return jnp.argmax(p, axis=-1).astype(jnp.int32)
  cum = jnp.cumsum(p, axis=-1)
  pick = jnp.minimum(jnp.sum(cum < u[:, None], axis=-1), k - 1)
  return jnp.where(u < cum[:, -1], pick, k).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Scores:
  """What the scoring pass (`make_score_fn`) reads from each row: host arrays over N rows."""
  lp: np.ndarray  # [N, L] token log-probs at T = 1 (0 before `response_width`'s columns)
  entropy: np.ndarray  # [N, L] the policy's entropy (T = 1) at each column of lp (0 where lp is)
  y_hat: np.ndarray  # [N] sum_k v_k pi(k | x, c)
  target_logp: np.ndarray  # [N] log pi(y* | x, c)
  score_mass: np.ndarray  # [N] the probability mass on the score tokens
  score_probs: np.ndarray  # [N, K] pi(k | x, c), renormalised or not as y_hat
  sampled: np.ndarray  # [N] a token drawn at the score position as the sampler would (scores
  # of several tokens: the index of a score drawn whole, K for none; `ScoreSpec.candidates`)
  sampled_is_score: np.ndarray  # [N] bool: that token is a score token
  sampled_value: np.ndarray  # [N] its score value (nan where it is no score)
  sampled_logp: np.ndarray  # [N] its log pi at T = 1
  probe_logp: np.ndarray  # [N] log pi at T = 1 of the `probe` token


def row_uniforms(key, item_ids: np.ndarray, num_samples: int) -> np.ndarray:
  """[N * k] uniforms keyed by (item id, sample number), rows i*k .. i*k+k-1 for item i: the
  same draws for an item however it is batched (the sampler's row keys, `sampling.sample`)."""
  ids = np.repeat(np.asarray(item_ids, np.int32), num_samples)
  js = np.tile(np.arange(num_samples, dtype=np.int32), len(item_ids))
  draw = lambda p, j: jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, p), j))
  return np.asarray(jax.vmap(draw)(ids, js), np.float32)


def run_scoring(score_fn, params, seqs: Sequences, target_id: np.ndarray, key, mesh: Mesh,
                chunk: int, probe: np.ndarray | None = None,
                uniforms: np.ndarray | None = None) -> Scores:
  """`score_fn` over the rows in chunks of `chunk` rows (padded to full chunks); host arrays.
  The score tokens are drawn with `uniforms` [N] (default: uniform(fold_in(key, chunk i)) over
  each chunk's rows)."""
  n = seqs.tokens.shape[0]
  chunk = min(chunk, n)
  probe = np.zeros((n,), np.int32) if probe is None else np.asarray(probe, np.int32)
  outs = []
  for i, start in enumerate(range(0, n, chunk)):
    sl = slice(start, start + chunk)
    u = (np.asarray(jax.random.uniform(jax.random.fold_in(key, i), (chunk,)))
         if uniforms is None else np.asarray(uniforms[sl], np.float32))
    b = {"tokens": seqs.tokens[sl], "mask": seqs.mask[sl], "score_pos": seqs.score_pos[sl],
         "target_id": target_id[sl], "probe": probe[sl], "u": u[:len(seqs.tokens[sl])]}
    short = chunk - b["tokens"].shape[0]
    if short:
      b = {k: np.concatenate([v, np.repeat(v[-1:], short, 0)], 0) for k, v in b.items()}
    o = score_fn(params, shd.put_batch(b, mesh))
    o = shd.to_host(o)
    outs.append({k: np.asarray(v)[:chunk - short] for k, v in o.items()})
  return Scores(**{k: np.concatenate([o[k] for o in outs], 0) for k in outs[0]})


def scores_from_samples(gen: Samples, seqs: Sequences, target_id: np.ndarray,
                        score_tokens: ScoreTokens, *, renormalize: bool = False) -> Scores:
  """What `run_scoring` returns, from what the sampler read on the way (`sample_cots(...,
  capture_scores=True)`) instead of a teacher-forced pass over `seqs` (`build_sequences` of
  `gen`): the CoT tokens' log-probs and entropies from the decode steps, the score
  distribution from the step after the delimiter, the sampled score token drawn there.

  Equal to the scoring pass up to float order (decode step vs full forward; tests/
  test_sampling.py states the tolerance). Rows without a delimiter get zeros: callers read a
  score only where `gen.found`. `probe_logp` is not available (zeros): a pass under other
  parameters (the KL reference) still needs `run_scoring`.
  """
  if gen.score_log_probs is None:
    raise ValueError("scores_from_samples needs samples from sample_cots(capture_scores=True)")
  n, lp_w = gen.prompt_tokens.shape
  r = gen.response.shape[1]
  spread = lambda a: np.concatenate(  # [N, R] response columns -> [N, L] of `seqs`
      [np.zeros((n, lp_w), np.float32), a,
       np.zeros((n, seqs.tokens.shape[1] - lp_w - r), np.float32)], axis=1)
  spec = obj.ScoreSpec.of(score_tokens)
  ids, values = np.asarray(spec.ids), np.asarray(spec.values, np.float32)
  logp = gen.score_log_probs  # [N, K] full-vocabulary log-softmax at the score temperature
  if renormalize:
    probs = np.exp(logp - np.logaddexp.reduce(logp, axis=-1, keepdims=True))
  else:
    probs = np.exp(logp)
  k_of = np.argmax(np.asarray(target_id)[:, None] == ids[None, :], axis=-1)
  hit = gen.next_token[:, None] == ids[None, :]
  is_score = np.any(hit, axis=-1) & gen.found
  return Scores(lp=spread(gen.policy_lp), entropy=spread(gen.entropy),
                y_hat=(probs * values).sum(-1).astype(np.float32),
                target_logp=np.take_along_axis(logp, k_of[:, None], 1)[:, 0],
                score_mass=np.exp(logp).sum(-1).astype(np.float32),
                score_probs=probs.astype(np.float32), sampled=gen.next_token,
                sampled_is_score=is_score,
                sampled_value=np.where(is_score, values[np.argmax(hit, axis=-1)], np.nan
                                       ).astype(np.float32),
                sampled_logp=gen.next_token_lp,
                probe_logp=np.zeros((n,), np.float32))


def target_token_ids(target: np.ndarray, score_tokens: ScoreTokens) -> np.ndarray:
  """[N] the score token of each target (the nearest score value), host int array (scores of
  several tokens: the score's index, `ScoreSpec.candidates`)."""
  spec = obj.ScoreSpec.read(score_tokens)
  return np.asarray(obj.target_token_ids_for(jnp.asarray(target, jnp.float32), spec.ids,
                                             spec.values))


# ---------------------------------------------------------------------------------------------
# Scores of more than one token ("10" as "1" "0"): each score's exact probability


@functools.lru_cache(maxsize=16)
def _candidates_fn(graphdef, candidates: CandidatePaths, mesh: Mesh):
  def fn(params, tokens, mask, score_pos):
    with shd.activation_sharding(mesh):
      return score_candidates(graphdef, params, tokens, mask, score_pos, candidates,
                              response_width=1).score_log_probs

  b2, b1 = shd.batch_sharding(mesh, 2), shd.batch_sharding(mesh, 1)
  return jax.jit(fn, in_shardings=(None, b2, b2, b1), out_shardings=b2)


def candidate_log_probs(graphdef, params, seqs: Sequences, score_tokens: ScoreTokens, mesh: Mesh
                        ) -> np.ndarray:
  """[N, K] log pi(score k | prompt, CoT) of every score, each read over all of its tokens
  (`models.score_candidates`: the score's tokens followed by a token that ends the number;
  one teacher-forced pass per path of the score tree).

  `seqs`: rows whose `score_pos` is the last delimiter token (anything after it is ignored).
  """
  fn = _candidates_fn(graphdef, CandidatePaths.of(score_tokens), mesh)
  b = shd.put_batch({"t": seqs.tokens, "m": seqs.mask, "p": seqs.score_pos.astype(np.int32)},
                    mesh)
  return np.asarray(shd.to_host(fn(params, b["t"], b["m"], b["p"])), np.float32)


# ---------------------------------------------------------------------------------------------
# One CoT per prompt, both readouts (evaluation and `real_jax.Judge`)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How a judge is read (the config's `eval` block)."""
  batch_size: int = 64
  max_items: int = 0
  readout: str = "cot"  # one of READOUTS
  greedy: bool = False
  temperature: float = 1.0
  top_p: float = 0.9
  max_response_len: int = 1024
  renormalize: bool = False
  invalid: str = "force"  # one of INVALID_READOUTS
  num_cots: int = 1  # CoTs per item: RAIL ŷ averaged over them, the standard readout by vote

  def score_fn(self, graphdef, score_tokens: ScoreTokens, mesh: Mesh):
    """The scoring pass that draws the score token with these settings (scores of several
    tokens: drawn whole from their exact probabilities at T = 1, `make_score_fn`)."""
    return make_score_fn(graphdef, score_tokens, mesh, score_temperature=1.0,
                         renormalize=self.renormalize, sample_temperature=self.temperature,
                         top_p=self.top_p, top_k=0, greedy=self.greedy)


@dataclasses.dataclass(frozen=True)
class Reading:
  """What `read_batch` reads from one CoT per prompt: host arrays over N prompts."""
  rail: np.ndarray  # [N] the RAIL prediction after the `invalid` rule
  y_hat: np.ndarray  # [N] sum_k v_k pi(k) as read at the score position
  score_probs: np.ndarray  # [N, K] pi(k | x, c) of each score token
  score_mass: np.ndarray  # [N] the probability mass on the score tokens
  standard: np.ndarray  # [N] the sampled score value (the midpoint when not a score token)
  standard_valid: np.ndarray  # [N] bool: a score token was sampled where the rule reads one
  valid: np.ndarray  # [N] bool: the CoT reached the delimiter
  status: np.ndarray  # [N] int: sampling.STOP_SEQUENCE | EOS | TRUNCATED (STATUS_NAMES)
  length: np.ndarray  # [N] tokens read: the CoT, plus the delimiter appended under "force"
  cot_length: np.ndarray  # [N] tokens of the sampled CoT
  response: np.ndarray | None  # [N, R] the sampled CoTs (None for the direct readout)
  # With num_cots = k > 1 the fields above aggregate the k CoTs of each item (rail, y_hat,
  # score_probs, score_mass: means; standard: the vote; valid: every CoT reached the delimiter;
  # status, lengths and response: the first CoT) and these keep each CoT: [N, k] (None if k = 1).
  cot_rail: np.ndarray | None = None
  cot_standard: np.ndarray | None = None
  cot_standard_valid: np.ndarray | None = None
  all_responses: np.ndarray | None = None  # [N, k, R]
  all_cot_lengths: np.ndarray | None = None  # [N, k]

  def cot_tokens(self, i: int, j: int = 0) -> list[int]:
    """The sampled CoT of row `i` (its `j`-th with num_cots > 1; empty for the direct
    readout)."""
    if self.response is None:
      return []
    if j:
      return self.all_responses[i, j, :int(self.all_cot_lengths[i, j])].tolist()
    return self.response[i, :int(self.cot_length[i])].tolist()


def apply_invalid_rule(invalid: str, found: np.ndarray, y_hat: np.ndarray,
                       sampled_value: np.ndarray, sampled_is_score: np.ndarray, midpoint: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Both readouts under one rule for CoTs that did not reach the delimiter.

  Args:
    invalid: "force" (both readouts read the position after the delimiter appended to the CoT:
      RAIL its y_hat, the standard readout the score token sampled there) or "midpoint" (both
      predict `midpoint`).
    found: [N] bool, the CoT reached the delimiter.
    y_hat: [N] sum_k v_k pi(k) read at the (possibly forced) score position.
    sampled_value, sampled_is_score: [N] the token sampled there, as a score value, and whether it
      is a score token at all.

  Returns (rail [N] f32, standard [N] f32, standard_valid [N] bool): the standard readout is the
  midpoint wherever the sampled token is not a score.
  """
  read = found if invalid == "midpoint" else np.ones_like(found, bool)
  std_valid = np.asarray(sampled_is_score, bool) & read
  std = np.where(std_valid, sampled_value, midpoint).astype(np.float32)
  rail = np.where(read, y_hat, midpoint).astype(np.float32)
  return rail, std, std_valid


def vote(sampled: np.ndarray, valid: np.ndarray, values: Sequence[float], midpoint: float
         ) -> tuple[np.ndarray, np.ndarray]:
  """The standard readout of k CoTs per item: the score sampled most often among the valid
  ones; a tie goes to the score nearest the tied scores' mean, halves up (3 and 4 tied: 4; 2
  and 4: 3). No valid score: `midpoint`, not valid. [N, k] -> ([N] f32, [N] bool)."""
  values = np.asarray(values, np.float64)
  out = np.full(len(sampled), midpoint, np.float64)
  for i, (row, ok) in enumerate(zip(np.asarray(sampled), np.asarray(valid, bool))):
    if not ok.any():
      continue
    picked, counts = np.unique(row[ok], return_counts=True)
    mean = picked[counts == counts.max()].mean()
    dist = np.abs(values - mean)
    out[i] = values[np.flatnonzero(dist == dist.min())[-1]]  # the larger on a half
  return out.astype(np.float32), np.asarray(valid, bool).any(axis=1)


def _aggregate(r: Reading, k: int, values: Sequence[float], midpoint: float) -> Reading:
  """A `Reading` of N * k rows (k CoTs per item, adjacent) as one per item (see `Reading`)."""
  per = lambda a: a.reshape(-1, k, *a.shape[1:])
  std, std_valid = vote(per(r.standard), per(r.standard_valid), values, midpoint)
  first = lambda a: None if a is None else a[::k]
  return Reading(
      rail=per(r.rail).mean(1).astype(np.float32), y_hat=per(r.y_hat).mean(1).astype(np.float32),
      score_probs=per(r.score_probs).mean(1).astype(np.float32),
      score_mass=per(r.score_mass).mean(1).astype(np.float32), standard=std,
      standard_valid=std_valid, valid=per(r.valid).all(1), status=first(r.status),
      length=first(r.length), cot_length=first(r.cot_length), response=first(r.response),
      cot_rail=per(r.rail), cot_standard=per(r.standard),
      cot_standard_valid=per(r.standard_valid),
      all_responses=None if r.response is None else per(r.response),
      all_cot_lengths=per(r.cot_length))


def read_batch(graphdef, params, prompt_tokens, prompt_mask, key, *, settings: EvalSettings,
               score_tokens: ScoreTokens, score_fn, mesh, pad_id: int, delim_start=None,
               prompt_buckets=None, item_ids: np.ndarray | None = None) -> Reading:
  """`settings.num_cots` CoTs per prompt (one by default: the paper's protocol) and both
  readouts: the judging step shared by evaluation and `Judge`. With k > 1 CoTs (cot readout
  only), each CoT is read under the same rules as one, then RAIL ŷ is their mean and the
  standard readout their vote (`vote`). The direct readout has no CoT: `num_cots` does not
  apply to it.

  Args:
    prompt_tokens, prompt_mask: `[N, Lp]` chat-rendered, left-padded prompts.
    key: PRNG key (sampling, then the score token drawn at the score position).
    settings: `EvalSettings` (readout cot | direct, sampling, invalid = force | midpoint).
    score_fn: `settings.score_fn(...)` (`make_score_fn` with the same sampling settings).
    delim_start: the delimiter's ids at the start of a response (direct readout).
    item_ids: [N] ints: every random draw of item n (its CoTs, its sampled scores) is keyed by
      (key, item_ids[n], CoT number), so an item reads the same in any batch (`Judge.grade`, the
      server). None: keyed by the row's position in this batch (evaluation).

  Returns a `Reading` (host arrays).
  """
  k = settings.num_cots if settings.readout != "direct" else 1
  r = _read_rows(graphdef, params, prompt_tokens, prompt_mask, key, settings=settings,
                 score_tokens=score_tokens, score_fn=score_fn, mesh=mesh, pad_id=pad_id,
                 delim_start=delim_start, prompt_buckets=prompt_buckets, num_cots=k,
                 item_ids=item_ids)
  if k == 1:
    return r
  values = np.asarray(score_tokens.values, np.float32)
  return _aggregate(r, k, values, float(values.mean()))


def _read_rows(graphdef, params, prompt_tokens, prompt_mask, key, *, settings: EvalSettings,
               score_tokens: ScoreTokens, score_fn, mesh, pad_id: int, delim_start=None,
               prompt_buckets=None, num_cots: int = 1, item_ids=None) -> Reading:
  """`num_cots` CoTs per prompt (rows i*k .. i*k+k-1 are prompt i's), each with both
  readouts (see `read_batch`)."""
  values = np.asarray(score_tokens.values, np.float32)
  midpoint = float(values.mean())
  n = len(prompt_tokens) * num_cots
  if settings.readout == "direct":
    seqs = append_delimiter(prompt_tokens, prompt_mask, delim_start)
    found = np.ones(n, bool)
    status = np.full(n, sampling.STOP_SEQUENCE, np.int32)  # read right after the delimiter
    length = np.zeros(n, np.int32)
    resp_tokens = None
  else:
    sampler = SamplerSettings(max_new_tokens=settings.max_response_len,
                              temperature=settings.temperature, top_p=settings.top_p,
                              greedy=settings.greedy)
    g = sample_cots(graphdef, params, prompt_tokens, prompt_mask, jax.random.fold_in(key, 0),
                    sampler, score_tokens, num_samples=num_cots, mesh=mesh, pad_id=pad_id,
                    prompt_buckets=prompt_buckets, prompt_ids=item_ids)
    found, length = g.found, g.length.copy()
    status = np.where(found, sampling.STOP_SEQUENCE,
                      np.where(g.eos, sampling.EOS, sampling.TRUNCATED)).astype(np.int32)
    response = g.response
    resp_tokens = response
    if settings.invalid == "force":
      # No delimiter: append it to the CoT (replacing a final EOS) and read the score there.
      delim = np.asarray(score_tokens.delimiter_ids, np.int32)
      extra = len(delim)
      response = np.concatenate([response, np.full((n, extra), pad_id, np.int32)], 1)
      for r in np.nonzero(~found)[0]:
        m = int(length[r]) - (1 if g.eos[r] else 0)
        response[r, m:] = pad_id
        response[r, m:m + extra] = delim
        length[r] = m + extra
    seqs = build_sequences(g.prompt_tokens, g.prompt_mask, response, length,
                           pad_id=pad_id, extra=0)
  cot_length = length if resp_tokens is None else np.asarray(g.length)
  score_key = jax.random.fold_in(key, 1)
  u = None if item_ids is None else row_uniforms(score_key, item_ids, num_cots)
  out = run_scoring(score_fn, params, seqs, np.zeros(n, np.int32), score_key, mesh,
                    chunk=n // num_cots,  # k CoTs: k passes of the one-CoT shape
                    uniforms=u)
  y_hat, probs, mass = out.y_hat, out.score_probs, out.score_mass
  sampled_is_score = out.sampled_is_score
  sampled_value = np.where(sampled_is_score, out.sampled_value, midpoint).astype(np.float32)
  rail, std, std_valid = apply_invalid_rule(settings.invalid, found, y_hat, sampled_value,
                                            sampled_is_score, midpoint)
  return Reading(rail=rail, y_hat=y_hat, score_probs=probs,
                 score_mass=mass, standard=std, standard_valid=std_valid,
                 valid=found, status=status, length=np.asarray(length),
                 cot_length=np.asarray(cot_length), response=resp_tokens)
