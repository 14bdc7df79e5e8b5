"""Sampler and scoring pass (real_jax.sampling) on tiny random Qwen3 checkpoints.

Compilations are the cost here, so the tests share a few sampler configs (module fixtures).
"""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from hf_fixtures import make_tiny_qwen3
from real_jax import layout
from real_jax import models, readout
from real_jax import sampling as S
from real_jax import sharding as shd
from real_jax.judge.scores import ScoreTokens
from real_jax.models import hf as hf_io

V = 256
P = 8          # prompt bucket
M = 12         # new tokens
LENS = (7, 4, 2, 6)  # real prompt lengths (left-padded)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  # Untied, 8 q / 4 kv heads (divides the tensor=4 mesh axis); a larger init makes greedy
  # continuations vary instead of repeating one token.
  return make_tiny_qwen3(str(tmp_path_factory.mktemp("tiny_qwen3")), vocab_size=V,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=16,
                         tie_word_embeddings=False, initializer_range=0.2)


@pytest.fixture(scope="module")
def model(ckpt):
  cfg, graphdef, params = hf_io.load_hf(ckpt)
  return cfg, graphdef, params


@pytest.fixture(scope="module")
def prompts():
  rng = np.random.default_rng(0)
  b, width = len(LENS), 7
  tokens = np.zeros((b, width), np.int32)
  mask = np.zeros((b, width), bool)
  for i, n in enumerate(LENS):
    tokens[i, width - n:] = rng.integers(1, V, n)
    mask[i, width - n:] = True
  return tokens, mask


GREEDY = S.SamplingConfig(max_new_tokens=M, greedy=True, prompt_buckets=(P,))
SAMPLED = S.SamplingConfig(max_new_tokens=M, temperature=0.8, top_p=0.9, prompt_buckets=(P,))


@pytest.fixture(scope="module")
def greedy_out(model, prompts):
  _, graphdef, params = model
  return S.sample(graphdef, params, *prompts, jax.random.key(0), GREEDY)


@pytest.fixture(scope="module")
def sampled_out(model, prompts):
  _, graphdef, params = model
  return S.sample(graphdef, params, *prompts, jax.random.key(7), SAMPLED, num_samples=3)


def _np(x):
  return np.asarray(jax.device_get(x))


# ---------------------------------------------------------------------------------------------
# Exactness against transformers and the scoring pass


def test_greedy_matches_transformers_generate(ckpt, prompts, greedy_out):
  import torch
  from transformers import Qwen3ForCausalLM
  tokens, mask = prompts
  hf = Qwen3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
  with torch.no_grad():
    ref = hf.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                      do_sample=False, max_new_tokens=M, min_new_tokens=M, pad_token_id=0,
                      eos_token_id=None)[:, tokens.shape[1]:].numpy()
  got = _np(greedy_out.tokens)
  assert len(np.unique(ref)) > 8, "degenerate fixture: greedy repeats one token"
  np.testing.assert_array_equal(got, ref)
  np.testing.assert_array_equal(_np(greedy_out.lengths), M)
  np.testing.assert_array_equal(_np(greedy_out.status), S.TRUNCATED)
  np.testing.assert_array_equal(_np(greedy_out.sampling_log_probs), 0.0)
  # Groups of 3 rows share each prompt's cache: every row of a group is the same greedy row.
  _, graphdef, params = hf_io.load_hf(ckpt)
  grouped = S.sample(graphdef, params, tokens, mask, jax.random.key(0), GREEDY, num_samples=3)
  np.testing.assert_array_equal(_np(grouped.tokens), np.repeat(ref, 3, axis=0))


def test_repetition_penalty_matches_transformers_generate(ckpt, model):
  """Greedy decoding with TRACT-style repetition penalty = transformers' (prompt tokens and
  generated ones penalised); policy log-probs stay the model's own (= the scoring pass)."""
  import torch
  from transformers import Qwen3ForCausalLM
  rng = np.random.default_rng(3)
  tokens = rng.integers(1, V, (3, 7)).astype(np.int32)  # unpadded: transformers also penalises
  mask = np.ones_like(tokens, bool)                       # the pad id of padded rows
  _, graphdef, params = model
  hf = Qwen3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
  for penalty in (1.5, 0.7):
    cfg = GREEDY.replace(repetition_penalty=penalty)
    out = S.sample(graphdef, params, tokens, mask, jax.random.key(0), cfg)
    with torch.no_grad():
      ref = hf.generate(torch.tensor(tokens), do_sample=False, max_new_tokens=M,
                        min_new_tokens=M, pad_token_id=0, eos_token_id=None,
                        repetition_penalty=penalty)[:, tokens.shape[1]:].numpy()
      plain = hf.generate(torch.tensor(tokens), do_sample=False, max_new_tokens=M,
                          min_new_tokens=M, pad_token_id=0, eos_token_id=None)[:, 7:].numpy()
    assert (ref != plain).any(), "the penalty changed nothing: the test has no power"
    np.testing.assert_array_equal(_np(out.tokens), ref)
    t, m, pos = S.scoring_inputs(out)
    scored = models.score_sequences(graphdef, params, t, m, pos)
    np.testing.assert_allclose(_np(scored.token_log_probs)[:, P:], _np(out.policy_log_probs),
                               atol=1e-4)


def test_sampler_log_probs_equal_scoring_pass(model, sampled_out):
  _, graphdef, params = model
  tokens, mask, score_pos = S.scoring_inputs(sampled_out)
  scored = models.score_sequences(graphdef, params, tokens, mask, score_pos)
  np.testing.assert_allclose(_np(scored.token_log_probs)[:, P:],
                             _np(sampled_out.policy_log_probs), atol=1e-4)
  assert np.all(_np(sampled_out.sampling_log_probs) <= 1e-6)


def test_scoring_pass_on_response_columns_only(model, sampled_out):
  """response_width=M: the generated columns' log-probs and the score logits are the full
  pass's; the prompt's columns are 0 (not computed)."""
  _, graphdef, params = model
  tokens, mask, pos = S.scoring_inputs(sampled_out)
  full = models.score_sequences(graphdef, params, tokens, mask, pos)
  part = models.score_sequences(graphdef, params, tokens, mask, pos, response_width=M)
  np.testing.assert_allclose(_np(part.token_log_probs)[:, P:], _np(full.token_log_probs)[:, P:],
                             atol=1e-6)
  assert np.all(_np(part.token_log_probs)[:, :P] == 0) and np.any(_np(full.token_log_probs)[:, :P])
  np.testing.assert_allclose(_np(part.score_logits), _np(full.score_logits), atol=1e-6)


def _full_scoring(graphdef, p, tokens, mask, pos, temperature):
  """Unchunked reference: log_softmax over the whole [B, T, V] logits."""
  logits = models.forward_logits(graphdef, p, tokens, mask)
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1] / temperature), tokens[:, 1:, None],
                           -1)[..., 0]
  lp = jnp.where(mask[:, 1:] & mask[:, :-1], lp, 0.0)
  lp = jnp.concatenate([jnp.zeros((tokens.shape[0], 1)), lp], axis=1)
  return models.ScoreOutput(lp, logits[jnp.arange(tokens.shape[0]), pos])


def _loss(out):
  return out.token_log_probs.sum() + 0.1 * jax.nn.logsumexp(out.score_logits, -1).sum()


def _max_vocab_elems(jaxpr, vocab):
  """Largest intermediate with a vocabulary-sized axis anywhere in a (nested) jaxpr."""
  from jax.extend.core import jaxprs_in_params
  best = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      shape = getattr(v.aval, "shape", ())
      if vocab in shape:
        best = max(best, int(np.prod(shape)))
    for sub in jaxprs_in_params(eqn.params):
      best = max(best, _max_vocab_elems(sub, vocab))
  return best


def test_scoring_pass_exact_and_memory_bounded():
  """The chunked pass equals the unchunked one (values and gradients, left-padded rows) and its
  memory does not scale with vocabulary x time: no [B, T, V] float32 logits, forward or grad."""
  b, t, chunk, temp = 2, 256, 16, 0.7
  rng = np.random.default_rng(0)
  lens = np.array([t, t - 37])
  mask = jnp.asarray(np.arange(t)[None, :] >= (t - lens)[:, None])  # left padding
  pos = jnp.asarray(lens // 2 + (t - lens))

  def setup(vocab):
    cfg = models.Qwen3Config(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                             num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
    graphdef, abstract = models.abstract_model(cfg)  # random values without compiling an init
    params = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.normal(size=x.shape), x.dtype),
                          abstract)
    tokens = jnp.asarray(rng.integers(0, vocab, (b, t)), jnp.int32)
    chunked = jax.jit(jax.value_and_grad(lambda p: _loss(models.score_sequences(
        graphdef, p, tokens, mask, pos, temperature=temp, chunk_size=chunk))))
    return graphdef, params, tokens, chunked

  # Exactness against the unchunked pass (V = 4096).
  v1, v2 = 4096, 16384
  graphdef, params, tokens, chunked = setup(v1)
  compiled1 = chunked.lower(params).compile()
  l1, g1 = compiled1(params)
  ref_fn = lambda p: _full_scoring(graphdef, p, tokens, mask, pos, temp)
  (l2, ref), g2 = jax.jit(jax.value_and_grad(lambda p: (_loss(ref_fn(p)), ref_fn(p)),
                                             has_aux=True))(params)
  out = models.score_sequences(graphdef, params, tokens, mask, pos, temperature=temp, chunk_size=chunk)
  lp = _np(out.token_log_probs)
  np.testing.assert_allclose(lp, _np(ref.token_log_probs), atol=2e-5)
  assert np.all(lp[~_np(mask)] == 0) and np.all(lp[:, 0] == 0)
  assert lp[1, 37] == 0  # a row's first real token has no context
  np.testing.assert_allclose(_np(out.score_logits), _np(ref.score_logits), atol=2e-5)
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
  for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(_np(a), _np(c), atol=1e-4, rtol=1e-3)

  # Memory: the same pass with V x 4.
  temp1 = compiled1.memory_analysis().temp_size_in_bytes
  _, params2, _, chunked2 = setup(v2)
  temp2 = chunked2.lower(params2).compile().memory_analysis().temp_size_in_bytes
  # 1) No intermediate with a vocabulary axis, anywhere in the (nested) jaxpr of value-and-grad,
  #    is larger than one [B, chunk, V] block (1/16 of [B, T, V]).
  assert _max_vocab_elems(jax.make_jaxpr(chunked2)(params2).jaxpr, v2) == b * chunk * v2
  # 2) Compiled temporary memory of value-and-grad: growing V by 4x adds far less than the
  #    [B, T, V] float32 logits would (b * t * (v2 - v1) * 4 bytes = 25 MB); chunk blocks and
  #    [V, D] gradient buffers add a few MB.
  full_growth = b * t * (v2 - v1) * 4
  assert temp2 - temp1 < full_growth / 4, (temp1, temp2, full_growth)
  assert temp2 < b * t * v2 * 4 / 2, (temp2, b * t * v2 * 4)


# ---------------------------------------------------------------------------------------------
# Distributions: temperature, top-k, top-p (statistical checks with a fixed seed)


def _filtered_np(logits, temperature=1.0, top_k=0, top_p=1.0):
  """Exact target distribution in float64 by sorting (the reference implementation)."""
  l = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-l, kind="stable")
  p = np.exp(l[order] - l[order[0]])
  if top_k:
    p[top_k:] = 0.0
  p /= p.sum()
  if top_p < 1.0:
    cum = np.cumsum(p)
    k = int(np.searchsorted(cum, top_p - 1e-12)) + 1
    assert k == len(p) or cum[k - 1] - top_p > 1e-6, "borderline nucleus; change top_p"
    p[k:] = 0.0
    p /= p.sum()
  out = np.zeros_like(p)
  out[order] = p
  return out


def _chi2_ok(counts, probs):
  from scipy import stats
  support = probs > 0
  assert counts[~support].sum() == 0, "sampled a token outside the filtered support"
  n = counts.sum()
  expected = probs[support] * n
  big = expected >= 5  # pool the rare cells
  obs = np.append(counts[support][big], counts[support][~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.6, 0, 1.0), (1.0, 0, 0.7), (1.3, 40, 0.8)])
def test_sampling_frequencies_match_target(model, prompts, temperature, top_k, top_p):
  cfg, graphdef, params = model
  tokens, mask = prompts
  logits = _np(models.forward_logits(graphdef, params, jnp.asarray(tokens[:1]),
                                     jnp.asarray(mask[:1])))[0, -1] * 3.0  # sharper
  target = _filtered_np(logits, temperature, top_k, top_p)
  n = 16_000
  scfg = S.SamplingConfig(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p)
  u = jax.random.uniform(jax.random.key(1), (n,))
  tok, slp, plp = jax.jit(S.sample_from_logits, static_argnums=2)(
      jnp.broadcast_to(jnp.asarray(logits), (n, V)), u, scfg)
  tok = _np(tok)
  counts = np.bincount(tok, minlength=V)
  assert _chi2_ok(counts, target) > 1e-3
  np.testing.assert_allclose(_np(slp), np.log(target[tok]), atol=1e-4)
  np.testing.assert_allclose(_np(plp), jax.nn.log_softmax(logits)[tok], atol=1e-4)


def test_end_to_end_first_token_frequencies(model, prompts):
  """1-token generation from one prompt, many samples: the whole sampler path."""
  cfg, graphdef, params = model
  tokens, mask = prompts
  scfg = S.SamplingConfig(max_new_tokens=1, temperature=0.5, top_p=0.8, prompt_buckets=(P,))
  n = 4000
  out = S.sample(graphdef, params, tokens[:1], mask[:1], jax.random.key(3), scfg, num_samples=n)
  logits = _np(models.forward_logits(graphdef, params, jnp.asarray(tokens[:1]),
                                     jnp.asarray(mask[:1])))[0, -1]
  target = _filtered_np(logits, 0.5, 0, 0.8)
  tok = _np(out.tokens)[:, 0]
  assert _chi2_ok(np.bincount(tok, minlength=V), target) > 1e-3
  np.testing.assert_allclose(_np(out.sampling_log_probs)[:, 0], np.log(target[tok]), atol=1e-4)


def test_end_to_end_second_token_frequencies(model, prompts):
  """2-token generation, many samples of one prompt: the second token comes out of the decode
  step against the group-shared prompt cache; per first token, its frequencies and sampling
  log-probs match the exact filtered distribution of a full forward over prompt + first token."""
  cfg, graphdef, params = model
  tokens, mask = prompts
  temp, top_p = 0.7, 0.9
  scfg = S.SamplingConfig(max_new_tokens=2, temperature=temp, top_p=top_p, prompt_buckets=(P,))
  out = S.sample(graphdef, params, tokens[1:2], mask[1:2], jax.random.key(5), scfg,
                 num_samples=3000)
  tok = _np(out.tokens)
  firsts, counts = np.unique(tok[:, 0], return_counts=True)
  checked = 0
  for first in firsts[counts >= 400]:
    rows = tok[:, 0] == first
    seq = np.concatenate([tokens[1:2], [[first]]], axis=1)
    seq_mask = np.concatenate([mask[1:2], [[True]]], axis=1)
    logits = _np(models.forward_logits(graphdef, params, jnp.asarray(seq),
                                       jnp.asarray(seq_mask)))[0, -1]
    target = _filtered_np(logits, temp, 0, top_p)
    assert _chi2_ok(np.bincount(tok[rows, 1], minlength=V), target) > 1e-3
    np.testing.assert_allclose(_np(out.sampling_log_probs)[rows, 1],
                               np.log(target[tok[rows, 1]]), atol=1e-4)
    checked += 1
  assert checked >= 2, f"too few frequent first tokens: {dict(zip(firsts, counts))}"


def test_shared_prompt_cache_equals_per_row_cache(model, prompts, sampled_out):
  """Storing the prompt's KV once per group (cascade attention) samples exactly what a cache
  with a copy of the prompt per row samples: the same tokens, the same log-probs."""
  _, graphdef, params = model
  out = S.sample(graphdef, params, *prompts, jax.random.key(7),
                 SAMPLED.replace(share_prompt_cache=False), num_samples=3)
  np.testing.assert_array_equal(_np(out.tokens), _np(sampled_out.tokens))
  np.testing.assert_allclose(_np(out.policy_log_probs), _np(sampled_out.policy_log_probs),
                             atol=1e-5)
  np.testing.assert_allclose(_np(out.sampling_log_probs), _np(sampled_out.sampling_log_probs),
                             atol=1e-5)


def test_greedy_argmax_is_jnp_argmax():
  """The greedy draw's argmax (max, then the first index that holds it) equals jnp.argmax on
  every kind of row: distinct values, ties (the first wins), a NaN (the first NaN wins, as
  jnp.argmax), all -inf, all equal, +inf; an odd vocabulary."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(9, 1001)).astype(np.float32)
  x[1, [5, 700]] = 9.0                 # tie: the first
  x[2, [40, 41]] = np.nan              # NaN: the first NaN
  x[3] = -np.inf
  x[4] = 0.5                           # all equal
  x[5, 900] = np.inf
  x[6, 1000] = 50.0                    # last index
  x[7, 0] = 50.0                       # first index
  x[8, [3, 800]] = [np.nan, np.inf]
  x = jnp.asarray(x)
  got = jax.jit(lambda x: S._argmax(x, jnp.max(x, axis=-1)))(x)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(x, axis=-1)))
  tok, _, _ = jax.jit(lambda x: S.sample_from_logits(x, jnp.zeros(9), GREEDY))(x)
  np.testing.assert_array_equal(np.asarray(tok), np.asarray(jnp.argmax(x, axis=-1)))


def test_ahead_of_time_sampler_is_the_program_sample_runs(model, prompts, sampled_out):
  """`sampling.lower` (what the plan tool and the GPU suite compile) prepares the prompts as
  `sample` does (widths cut to the bucket, padding set to pad_id): its compiled program returns
  `sample`'s output, and `sampler_program` is the jitted function `sample` calls."""
  _, graphdef, params = model
  tokens, mask = prompts
  wide = np.concatenate([np.full((len(tokens), 3), 5, np.int32), tokens], 1)  # junk under padding
  wide_mask = np.concatenate([np.zeros((len(mask), 3), bool), mask], 1)
  lowered, args = S.lower(graphdef, params, wide, wide_mask, jax.random.key(7), SAMPLED,
                          num_samples=3)
  compiled = lowered.compile()
  assert compiled.memory_analysis() is not None
  out = compiled(*args)
  for f in ("tokens", "lengths", "status", "stop_lengths", "prompt_tokens", "prompt_mask"):
    np.testing.assert_array_equal(_np(getattr(out, f)), _np(getattr(sampled_out, f)), err_msg=f)
  np.testing.assert_allclose(_np(out.policy_log_probs), _np(sampled_out.policy_log_probs),
                             atol=1e-6)
  assert S.sampler_program(graphdef, SAMPLED, num_samples=3) is S.sampler_program(
      graphdef, SAMPLED, num_samples=3)
  tok, msk = S.prepare_prompts(wide, wide_mask, SAMPLED)
  assert tok.shape == (len(tokens), P) and not tok[~msk].any()  # pad_id 0 under the padding
  with pytest.raises(ValueError, match="num_samples"):
    S.lower(graphdef, params, *prompts, jax.random.key(0), SAMPLED, num_samples=0)


@pytest.mark.parametrize("finish_k", [32, 4096])
@pytest.mark.parametrize("kind", ["gauss0.5", "gauss3", "zipf", "peaked", "ties", "odd_vocab"])
def test_nucleus_threshold_matches_sort(kind, finish_k):
  """The sort-free search keeps exactly the sort-and-cumsum nucleus on 32k-token rows. With
  finish_k=4096 the search stops while brackets still hold thousands of elements, so the
  top_k finish, not the search, picks the threshold; with 32 the finish lists its candidates
  from the 32 chunks with the largest maxima (a vocabulary of 31,993: the last chunk padded)."""
  rng = np.random.default_rng(
      {"gauss0.5": 0, "gauss3": 1, "zipf": 2, "peaked": 3, "ties": 4, "odd_vocab": 5}[kind])
  rows, v, top_p = 16, 31993 if kind == "odd_vocab" else 32000, 0.9
  if kind == "odd_vocab":
    x = rng.normal(size=(rows, v)) * 2.0
  elif kind.startswith("gauss"):
    x = rng.normal(size=(rows, v)) * float(kind[5:])
  elif kind == "zipf":
    x = -1.1 * np.log(np.arange(1, v + 1))[None] + 0.3 * rng.normal(size=(rows, v))
    x = rng.permuted(x, axis=1)
  elif kind == "peaked":
    x = rng.normal(size=(rows, v))
    x[:, :3] += np.array([9.0, 8.5, 8.0])
  else:  # many exact ties
    x = np.round(rng.normal(size=(rows, v)), 1)
  x = x.astype(np.float32)
  e = jnp.exp(x - x.max(-1, keepdims=True))
  tau = _np(jax.jit(S._nucleus_threshold, static_argnums=(2, 3, 4))(e, e.sum(-1), top_p, 64,
                                                                     finish_k))
  e = _np(e).astype(np.float64)
  checked = 0
  for r in range(rows):
    s = np.sort(e[r])[::-1]
    cum = np.cumsum(s)
    k = int(np.searchsorted(cum, top_p * cum[-1])) + 1
    target = top_p * cum[-1]
    if min(cum[k - 1] - target, target - (cum[k - 2] if k > 1 else 0.0)) < 2e-6 * cum[-1]:
      continue  # within float32 rounding of the partial sums: either answer is right
    checked += 1
    want = s[k - 1]
    if kind == "ties":  # ties at the boundary are all kept
      assert tau[r] == np.float32(want), r
    else:
      assert np.sum(e[r] >= tau[r]) == k, (r, np.sum(e[r] >= tau[r]), k)
  assert checked >= rows // 2, f"only {checked} of {rows} rows away from a rounding tie"


# ---------------------------------------------------------------------------------------------
# Stopping


def _pick_stops(ref):
  """A bigram that first ends at column 4 of row 0, and an EOS first seen at column 5 of row 1,
  neither occurring in rows 2-3 (so those run to max_new_tokens)."""
  bigrams = lambda row, upto: {(int(row[i]), int(row[i + 1])) for i in range(upto - 1)}
  for c0 in range(4, M - 1):
    stop = (int(ref[0, c0 - 1]), int(ref[0, c0]))
    if stop in bigrams(ref[0], c0) or any(stop in bigrams(ref[r], M) for r in (2, 3)):
      continue
    for c1 in range(3, M - 1):
      eos = int(ref[1, c1])
      if eos in ref[1, :c1] or eos in ref[0, :c0 + 1] or eos in ref[2] or eos in ref[3]:
        continue
      if stop in bigrams(ref[1], c1 + 1):
        continue
      return stop, c0, eos, c1
  pytest.fail("the fixture's greedy rows leave no usable stop tokens; change the fixture's seed")


def test_stop_sequence_eos_and_truncation(model, prompts, greedy_out):
  _, graphdef, params = model
  ref = _np(greedy_out.tokens)
  # Row 0 stops right after its stop bigram, row 1 at its EOS; rows 2-3 run out.
  stop, c0, eos, c1 = _pick_stops(ref)
  cfg = GREEDY.replace(stop_sequences=(stop, (V + 5, V + 6, V + 7)), eos_ids=(eos,), pad_id=0)
  out = S.sample(graphdef, params, *prompts, jax.random.key(0), cfg)
  tok, lengths, status = _np(out.tokens), _np(out.lengths), _np(out.status)
  np.testing.assert_array_equal(status, [S.STOP_SEQUENCE, S.EOS, S.TRUNCATED, S.TRUNCATED])
  np.testing.assert_array_equal(lengths, [c0 + 1, c1 + 1, M, M])
  np.testing.assert_array_equal(_np(out.stop_lengths), [c0 + 1, 0, 0, 0])
  for r, n in enumerate(lengths):
    np.testing.assert_array_equal(tok[r, :n], ref[r, :n])  # unchanged before the end
    np.testing.assert_array_equal(tok[r, n:], 0)  # padded after it
    assert np.all(_np(out.policy_log_probs)[r, n:] == 0.0)
    np.testing.assert_allclose(_np(out.policy_log_probs)[r, :n],
                               _np(greedy_out.policy_log_probs)[r, :n], atol=1e-5)
  tokens, mask, score_pos = S.scoring_inputs(out)
  assert int(score_pos[0]) == P + c0  # the last stop token predicts the score token

  # One extra token after the stop sequence (the "standard" readout reads it).
  out2 = S.sample(graphdef, params, *prompts, jax.random.key(0),
                  cfg.replace(extra_tokens_after_stop=1))
  np.testing.assert_array_equal(_np(out2.lengths), [c0 + 2, c1 + 1, M, M])
  np.testing.assert_array_equal(_np(out2.status), _np(status))
  np.testing.assert_array_equal(_np(out2.stop_lengths), [c0 + 1, 0, 0, 0])
  np.testing.assert_array_equal(_np(out2.tokens)[0, :c0 + 2], ref[0, :c0 + 2])
  np.testing.assert_array_equal(_np(out2.tokens)[0, c0 + 2:], 0)
  assert int(S.scoring_inputs(out2)[2][0]) == P + c0


# ---------------------------------------------------------------------------------------------
# Groups, keys, sharding


def test_groups_differ_and_are_contiguous(sampled_out, prompts):
  tok = _np(sampled_out.tokens)
  n = 3
  assert tok.shape == (len(LENS) * n, M)
  np.testing.assert_array_equal(_np(sampled_out.prompt_index), np.repeat(np.arange(4), n))
  np.testing.assert_array_equal(_np(sampled_out.sample_index), np.tile(np.arange(n), 4))
  pt = _np(sampled_out.prompt_tokens)
  for i in range(4):
    rows = tok[i * n:(i + 1) * n]
    assert len({r.tobytes() for r in rows}) == n, f"samples of prompt {i} coincide"
    np.testing.assert_array_equal(pt[i * n:(i + 1) * n, -LENS[i]:],
                                  np.repeat(prompts[0][i:i + 1, -LENS[i]:], n, 0))


def test_deterministic_and_batch_order_independent(model, prompts, sampled_out):
  _, graphdef, params = model
  tokens, mask = prompts
  perm = np.array([2, 0, 3, 1])
  out = S.sample(graphdef, params, tokens[perm], mask[perm], jax.random.key(7), SAMPLED,
                 num_samples=3, prompt_ids=perm)
  n = 3
  rows = (perm[:, None] * n + np.arange(n)[None]).reshape(-1)
  np.testing.assert_array_equal(_np(out.tokens), _np(sampled_out.tokens)[rows])
  np.testing.assert_allclose(_np(out.sampling_log_probs),
                             _np(sampled_out.sampling_log_probs)[rows], atol=1e-6)


def test_sharded_shared_prompt_cache_equals_single_device(ckpt, prompts, sampled_out):
  """fsdp=2 x tensor=4 mesh (groups over fsdp, kv heads over tensor): same samples as 1 device."""
  mesh = shd.make_mesh({"fsdp": 2, "tensor": 4})
  _, graphdef, params = hf_io.load_hf(ckpt, mesh=mesh)
  out = S.sample(graphdef, params, *prompts, jax.random.key(7), SAMPLED, num_samples=3,
                 mesh=mesh)
  assert len(out.tokens.sharding.device_set) == 8
  np.testing.assert_array_equal(_np(out.tokens), _np(sampled_out.tokens))
  np.testing.assert_allclose(_np(out.policy_log_probs), _np(sampled_out.policy_log_probs),
                             atol=1e-5)
  np.testing.assert_allclose(_np(out.sampling_log_probs), _np(sampled_out.sampling_log_probs),
                             atol=1e-5)


# The scoring pass's outputs from the sampler: the CoTs' log-probs and entropies from the decode
# steps, the score distribution from one decode step after the delimiter. A one-token delimiter
# the model samples often (117 for this checkpoint and key) stops rows at lengths 2..M.
CAPTURE_ST = ScoreTokens(token_ids=(11, 12, 13, 14, 15), values=(1.0, 2.0, 3.0, 4.0, 5.0),
                         delimiter_ids=(117,), eos_id=255)
CAPTURE_TOL = 1e-4  # decode step vs teacher-forced forward, float32 (measured: <= 5e-6)


def _cots(model, prompts, max_new, capture):
  _, graphdef, params = model
  return readout.sample_cots(
      graphdef, params, *prompts, jax.random.key(7),
      readout.SamplerSettings(max_new_tokens=max_new, temperature=0.8, top_p=0.9), CAPTURE_ST,
      num_samples=8, mesh=None, pad_id=0, prompt_buckets=(P,), capture_scores=capture,
      score_temperature=0.7)


def test_scores_from_sampler_equal_the_scoring_pass(model, prompts):
  """`readout.scores_from_samples` equals `run_scoring` (the teacher-forced pass at the same
  settings) within CAPTURE_TOL on every output the rollout reads, on rows stopped at the
  delimiter at lengths 2..M (one exactly at the token limit), at EOS and truncated; capturing
  changes no CoT."""
  _, graphdef, params = model
  plain, cap = _cots(model, prompts, M, False), _cots(model, prompts, M, True)
  for f in ("prompt_tokens", "response", "length", "found", "eos", "truncated"):
    np.testing.assert_array_equal(getattr(cap, f), getattr(plain, f), err_msg=f)
  f = cap.found
  assert f.sum() >= 5 and len(set(cap.length[f])) >= 5 and M in cap.length[f]
  assert cap.eos.any() and cap.truncated.any()
  seqs = readout.build_sequences(cap.prompt_tokens, cap.prompt_mask, cap.response, cap.length,
                                 pad_id=0, extra=1)
  tid = np.asarray(CAPTURE_ST.token_ids)[np.arange(len(f)) % 5]
  mesh = shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
  score_fn = readout.make_score_fn(graphdef, CAPTURE_ST, mesh, score_temperature=0.7,
                                   sample_temperature=0.8, top_p=0.9, response_width=M + 1)
  ref = readout.run_scoring(score_fn, params, seqs, tid, jax.random.key(1), mesh, chunk=64,
                            probe=cap.next_token)
  for renorm in (False, True):
    got = readout.scores_from_samples(cap, seqs, tid, CAPTURE_ST, renormalize=renorm)
    np.testing.assert_allclose(got.lp, ref.lp, atol=CAPTURE_TOL)
    np.testing.assert_allclose(got.entropy, ref.entropy, atol=CAPTURE_TOL)
    assert np.abs(ref.lp).max() > 0.1 and np.abs(ref.entropy).max() > 0.1
    probs = ref.score_probs / ref.score_probs.sum(-1, keepdims=True) if renorm else ref.score_probs
    np.testing.assert_allclose(got.score_probs[f], probs[f], atol=CAPTURE_TOL)
    y_hat = (probs * np.asarray(CAPTURE_ST.values)).sum(-1)
    np.testing.assert_allclose(got.y_hat[f], y_hat[f], atol=CAPTURE_TOL)
    for k in ("target_logp", "score_mass"):
      np.testing.assert_allclose(getattr(got, k)[f], getattr(ref, k)[f], atol=CAPTURE_TOL,
                                 err_msg=k)
    # The token drawn after the delimiter and its log-prob at T = 1 (the standard-RL action).
    np.testing.assert_allclose(got.sampled_logp[f], ref.probe_logp[f], atol=CAPTURE_TOL)
  # One token fewer: the row that stopped at the limit is truncated, the others unchanged.
  short = _cots(model, prompts, M - 1, True)
  at_limit = f & (cap.length == M)
  assert short.truncated[at_limit].all() and not short.found[at_limit].any()
  np.testing.assert_array_equal(short.found, f & ~at_limit)
  np.testing.assert_allclose(short.score_log_probs[short.found], cap.score_log_probs[short.found],
                             atol=1e-5)
  with pytest.raises(ValueError, match="capture_scores"):
    readout.scores_from_samples(plain, seqs, tid, CAPTURE_ST)


def test_bad_inputs_raise(model):
  _, graphdef, params = model
  with pytest.raises(ValueError, match="left-padded"):
    S.sample(graphdef, params, np.ones((1, 4), np.int32), np.array([[1, 1, 0, 0]], bool),
             jax.random.key(0), GREEDY)
  with pytest.raises(ValueError, match="top_p"):
    S.SamplingConfig(top_p=0.0)
  with pytest.raises(ValueError, match="extra_tokens_after_stop"):
    S.SamplingConfig(capture_ids=(3,), stop_sequences=((5,),))
  assert layout.bucket_length(5, (4, 8), overflow="multiple") == 8 and layout.bucket_length(20, (4, 8), overflow="multiple") == 24


def test_kv_plan_figures_of_the_8b_rollout():
  """`benchmarks/sampler.py --kv-plan` prints the 8b rollout's KV bytes per device (docs/sampler.md
  quotes them): 64 prompts x 16 rows, 2048 + 1024 slots, 36 layers x 8 kv heads x 128, bf16, 8 devices."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "benchmarks/sampler.py", "--kv-plan",
                        "configs/prometheus.py:size=8b", "--devices", "8", "--hbm-gib", "95.7"],
                       cwd=root, capture_output=True, text=True, check=True).stdout
  # 1024 rows x 3072 slots x 144 KiB / 8 = 54 GiB; (64 x 2048 + 1024 x 1024) x 144 KiB / 8.
  assert "144 KiB per token slot" in out
  assert "per-row layout B x (P + R): 54.0 GiB per device" in out
  assert "G x P + B x R: 20.2 GiB per device (2.67x less)" in out
  assert "per-row 96, shared 264" in out
