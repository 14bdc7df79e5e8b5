"""Training on a scale whose scores are several tokens (1-10 with Qwen-style digits: "10" is
"1" "0"): the objectives read each score's exact probability (`models.score_candidates`,
`objectives.candidate_logits`), so the refinement term differentiates the same quantity the
readout reports. Checked against a hand enumeration (one forward per score), through the
trainer's own rollout and step, and the configurations that cannot train on such scales."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from real_jax import main as main_lib
from real_jax import models, readout
from real_jax import sharding as shd
from real_jax import objectives as obj
from real_jax.judge import prompts, scores
from real_jax.train import config_lib
from real_jax.train import rl as rl_lib
from real_jax.train import settings as settings_lib
from real_jax.train import supervised
from real_jax.train import state as state_lib
from real_jax.train import steps
from real_jax.train.batch import LMBatch, RLBatch
from real_jax.tools import plan
from real_jax.train.settings import AdvantageSettings
from run_helpers import tiny_random_model
from test_judge import _byte_level

pytestmark = pytest.mark.usefixtures("fast_compiles_module")


@pytest.fixture(scope="module")
def qwen():
  return _byte_level(True)


@pytest.fixture(scope="module")
def judge(qwen):
  return tiny_random_model(seed=5)


def test_candidate_logits_give_the_scores_log_probs_and_their_gradients():
  """softmax(candidate_logits(lp))[:K] = exp(lp), and the losses' gradients with respect to lp
  are those of the formulas written on lp directly, also when the scores hold all the mass
  (where a plain log(1 - S) would lose the gradient)."""
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(5), size=3)[:, :4]  # 4 scores, some mass on no score
  p[2] = [0.25, 0.25, 0.25, 0.25]  # all the mass on the scores: 1 - S rounds to 0 in float32
  lp = jnp.log(jnp.asarray(p, jnp.float32))
  z = obj.candidate_logits(lp)
  assert z.shape == (3, 5)
  np.testing.assert_allclose(jax.nn.log_softmax(z)[:, :4], lp, atol=2e-6)
  spec = obj.ScoreSpec.candidates([1.0, 2.0, 3.0, 4.0])
  target, tid = jnp.array([1.0, 3.5, 4.0]), jnp.array([0, 2, 3])

  def via_objectives(lp):
    sums, _ = obj.real_loss_sums(jnp.zeros((3, 2)), jnp.zeros((3, 2)), jnp.zeros(3),
                                 obj.candidate_logits(lp), target, spec.ids, spec.values,
                                 target_token_ids=tid)
    return sums.sq_err_sum + 0.5 * sums.nll_sum

  def direct(lp):
    y_hat = jnp.sum(jnp.exp(lp) * spec.values, -1)
    return jnp.sum((y_hat - target) ** 2) - 0.5 * jnp.sum(jnp.take_along_axis(
        lp, tid[:, None], 1))

  assert float(via_objectives(lp)) == pytest.approx(float(direct(lp)), rel=1e-5)
  np.testing.assert_allclose(jax.grad(via_objectives)(lp), jax.grad(direct)(lp), rtol=1e-4,
                             atol=1e-4)


def test_a_score_of_several_tokens_is_drawn_whole():
  """The standard readout's draw on such scales: inverse CDF over the scores' exact
  probabilities at T = 1, the remaining mass drawing no score (index K); greedy: the argmax."""
  lp = jnp.log(jnp.tile(jnp.array([[0.2, 0.3, 0.1]]), (5, 1)))
  u = jnp.array([0.1, 0.25, 0.55, 0.7, 0.999])
  assert list(readout._draw_candidate(lp, u, False)) == [0, 1, 2, 3, 3]
  assert list(readout._draw_candidate(lp, u, True)) == [1] * 5


def _rows(qwen, st):
  """Two rollout rows of one prompt: CoTs of different lengths, the shorter right-padded."""
  prompt = prompts.render_chat(qwen, "Grade the answer.")
  cots = ["good answer. So the overall score is",
          "the response is clear and helpful. So the overall score is"]
  resp = [qwen.encode(c, add_special_tokens=False) for c in cots]
  assert len(resp[1]) > len(resp[0]) + 3
  response = np.full((2, max(map(len, resp)) + 2), qwen.pad_token_id, np.int32)
  for i, r in enumerate(resp):
    response[i, :len(r)] = r
  pt = np.tile(np.asarray(prompt, np.int32)[None], (2, 1))
  seqs = readout.build_sequences(pt, np.ones_like(pt, bool), response,
                                 np.array([len(r) for r in resp]), pad_id=qwen.pad_token_id)
  return prompt, resp, seqs


def _enumerated(graphdef, params, qwen, st, prompt, cots):
  """(CoT token log-probs [T_i] per row, pi [rows, K]): a sequence per (row, score), prompt +
  CoT + the score's digits, all in one right-padded forward."""
  digits = jnp.asarray([qwen.convert_tokens_to_ids(str(d)) for d in range(10)])
  cands = [[qwen.convert_tokens_to_ids(ch) for ch in label] for label in st.scale.labels]
  seqs = [prompt + cot + cand for cot in cots for cand in cands]
  width = max(map(len, seqs))
  ids = np.full((len(seqs), width), qwen.pad_token_id, np.int32)
  mask = np.zeros((len(seqs), width), bool)
  for i, sq in enumerate(seqs):
    ids[i, :len(sq)], mask[i, :len(sq)] = sq, True
  lp = jax.nn.log_softmax(models.forward_logits(graphdef, params, jnp.asarray(ids),
                                                jnp.asarray(mask)), -1)
  cot_lps, pis = [], []
  for r, cot in enumerate(cots):
    row = lambda k: lp[r * len(cands) + k]
    cot_lps.append(jnp.stack([row(0)[len(prompt) + j - 1, t] for j, t in enumerate(cot)]))
    start = len(prompt) + len(cot) - 1  # the last delimiter token predicts the first digit
    pi = []
    for k, cand in enumerate(cands):
      tok = sum(row(k)[start + j, t] for j, t in enumerate(cand))
      end = jnp.log1p(-jnp.sum(jnp.exp(row(k)[start + len(cand), digits])))
      pi.append(jnp.exp(tok + end))
    pis.append(jnp.stack(pi))
  return cot_lps, jnp.stack(pis)


def test_real_loss_and_gradient_on_1_10_equal_hand_enumeration(qwen, judge):
  """The REAL loss of the trainer (`steps.real_objective`: CoT policy gradient + beta *
  [(y_hat - y*)^2 + lam * -log pi(y*)]) and its gradient, on 1-10, equal the same loss built
  from a forward pass per score; two CoTs of different lengths, right padding, log-probs on
  the response columns as the trainer reads them."""
  graphdef, params, _ = judge
  st = scores.resolve_score_tokens(qwen, scale="1-10")
  prompt, resp, seqs = _rows(qwen, st)
  target = np.array([10.0, 3.0], np.float32)
  adv = np.array([0.7, -0.4], np.float32)
  batch = RLBatch(tokens=seqs.tokens, mask=seqs.mask, score_pos=seqs.score_pos,
                  cot_mask=seqs.cot_mask, old_lp=np.zeros(seqs.cot_mask.shape, np.float32),
                  ref_lp=np.zeros(seqs.cot_mask.shape, np.float32), target=target,
                  target_id=readout.target_token_ids(target, st).astype(np.int32), adv=adv,
                  pg_keep=np.ones(2, np.float32), refine_keep=np.ones(2, np.float32))
  assert list(batch.target_id) == [9, 2]  # the scores' indices on 1-10
  beta, lam = 1.0, 0.5
  # Log-probs on the response columns only, as the trainer computes them (`run_rl`).
  width = seqs.tokens.shape[1] - len(prompt)
  loss = steps.real_objective(st, steps.RLLossConfig(beta=beta, lam=lam, response_width=width))
  den = loss.denominators(batch)
  got_fn = lambda p: loss.fn(graphdef, p, jax.tree.map(jnp.asarray, batch), den)[0]
  values = jnp.arange(1.0, 11.0)

  def want_fn(p):
    cot_lps, pi = _enumerated(graphdef, p, qwen, st, prompt, resp)
    pg = -sum(jnp.sum(c) * a for c, a in zip(cot_lps, adv)) / sum(map(len, resp))
    y_hat = jnp.sum(pi * values, -1)
    nll = -jnp.log(pi[np.arange(2), target.astype(int) - 1])
    return pg + beta * jnp.mean((y_hat - target) ** 2 + lam * nll)

  got, g_got = jax.jit(jax.value_and_grad(got_fn))(params)
  want, g_want = jax.jit(jax.value_and_grad(want_fn))(params)
  assert float(got) == pytest.approx(float(want), rel=1e-4)
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
  a, b = flat(g_got), flat(g_want)
  assert np.abs(b).max() > 1e-3  # a gradient to compare
  np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * np.abs(b).max())


def test_raft_and_tract_read_the_scores_exactly_on_1_10(qwen, judge):
  """RAFT's and TRACT's squared error on 1-10 read y_hat from each score's probability (a
  forward pass per score)."""
  graphdef, params, _ = judge
  st = scores.resolve_score_tokens(qwen, scale="1-10")
  prompt, resp, seqs = _rows(qwen, st)
  target = np.array([10.0, 1.0], np.float32)
  _, pi = _enumerated(graphdef, params, qwen, st, prompt, resp)
  mse = float(np.mean(((np.asarray(pi) * np.arange(1, 11)).sum(-1) - target) ** 2))
  ones = np.ones(2, np.float32)
  b = LMBatch(tokens=seqs.tokens, mask=seqs.mask, loss_mask=seqs.cot_mask,
              score_pos=seqs.score_pos, target=target,
              target_id=readout.target_token_ids(target, st).astype(np.int32), sample_mask=ones)
  b = jax.tree.map(jnp.asarray, b)
  raft = steps.raft_objective(st)
  got, _ = raft.fn(graphdef, params, b, raft.denominators(b))
  assert float(got) == pytest.approx(mse, rel=1e-4)
  tract = steps.cot_raft_objective(st, lam=1.0)
  _, m = tract.fn(graphdef, params, b, tract.denominators(b))
  assert float(m["mse"]) == pytest.approx(mse, rel=1e-4)


def test_rollout_and_update_on_1_10(qwen, judge):
  """The trainer's own path: a rollout round (CoTs that reach the delimiter and one that does
  not, the scoring pass, rewards) and REAL steps on its batch. The rollout's y_hat and sampled
  score are those of each score's probability (a forward pass per score) and the draw's
  uniforms; the binary reward follows the sampled score; the steps move y_hat to the labels."""
  graphdef, params, mesh = judge
  st = scores.resolve_score_tokens(qwen, scale="1-10")
  prompt, resp, _ = _rows(qwen, st)
  cots = [resp[0], resp[1], resp[0], resp[1][:5]]  # the last one stops before the delimiter
  width = max(map(len, cots))
  response = np.full((8, width), qwen.pad_token_id, np.int32)
  length = np.zeros(8, np.int32)
  for i in range(8):
    c = cots[i % 4]
    response[i, :len(c)], length[i] = c, len(c)
  found = np.array([i % 4 != 3 for i in range(8)])
  pt = np.tile(np.asarray(prompt, np.int32)[None], (8, 1))
  gen = readout.Samples(prompt_tokens=pt, prompt_mask=np.ones_like(pt), response=response,
                        length=length, found=found, eos=~found, truncated=np.zeros(8, bool))
  prompts_batch = {"prompt_tokens": pt[::4], "prompt_mask": np.ones_like(pt[::4]),
                   "target": np.array([10.0, 2.0], np.float32),
                   "target_int": np.array([10, 2], np.int32)}
  settings = rl_lib.RolloutSettings(
      sampler=readout.SamplerSettings(max_new_tokens=width), group_size=4, filter="all")
  score_fn = readout.make_score_fn(graphdef, st, mesh, response_width=width + 1)
  advantages = AdvantageSettings(format_penalty=81.0)  # the authors' recipe; 1-10's worst error
  key = jax.random.PRNGKey(0)
  r = rl_lib.rollout_round(graphdef, params, None, prompts_batch, key, settings=settings,
                           advantages=advantages, score_fn=score_fn, score_tokens=st,
                           mesh=mesh, pad_id=qwen.pad_token_id, gen=gen)
  b = r.batch
  assert list(b.target_id) == [9] * 4 + [1] * 4 and list(b.refine_keep) == list(found)
  _, pi = _enumerated(graphdef, params, qwen, st, prompt, cots)
  pi = np.asarray(pi)[np.arange(8) % 4]
  np.testing.assert_allclose(r.samples.y_hat, (pi * np.arange(1, 11)).sum(-1), rtol=1e-4)
  # The score drawn whole by inverse CDF with the scoring pass's uniforms (`run_scoring`).
  u = np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, 1), 0),
                                    (settings.score_rows,)))[:8]
  cum = np.cumsum(pi, -1)
  want = np.where(u < cum[:, -1], 1 + (cum < u[:, None]).sum(-1), np.nan)
  want[~found] = np.nan  # no delimiter: no sampled score
  np.testing.assert_array_equal(r.samples.sampled_score, want)
  np.testing.assert_array_equal(r.samples.binary_reward,
                                (want == np.repeat([10, 2], 4)).astype(np.float32))

  tx = optax.adam(1e-2)
  state, shardings = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, mesh, 0)
  loss = steps.real_objective(st, steps.RLLossConfig(beta=1.0, lam=0.0,
                                                     response_width=width + 1))
  step = steps.make_train_step(loss, graphdef, tx, mesh, shardings, b, donate=False)
  errs = []
  for _ in range(3):
    state, m = step(state, shd.put_batch(b, mesh))
    assert float(m["applied"]) == 1.0 and np.isfinite(float(m["loss"]))
    errs.append(float(m["mse"]))
  assert errs[-1] < errs[0]
  # Standard RL's action is one score token: refused on such scales, naming the method.
  with pytest.raises(ValueError, match="method=real"):
    rl_lib.rollout_round(graphdef, params, None, prompts_batch, key,
                         settings=dataclasses.replace(settings, standard_rl=True),
                         advantages=advantages, score_fn=score_fn, score_tokens=st, mesh=mesh,
                         pad_id=qwen.pad_token_id, gen=gen)


def test_end_of_number_stays_exact_where_a_digit_follows_almost_surely():
  """log(1 - p(digit)) as the log-mass of the other tokens: float32 agrees with float64 where
  1 - sum p(digit) would round away, and its gradient to the digit's logit stays alive."""
  x = np.zeros((3, 100))
  x[:, 10] = [12.0, 18.0, 25.0]  # the digit's logit above 99 others
  lp = jax.nn.log_softmax(jnp.asarray(x, jnp.float32))
  got = models.log_number_ends(lp, (10, 11))
  x64 = x - np.log(np.exp(x).sum(-1, keepdims=True))
  want = np.log(np.exp(np.delete(x64, [10, 11], -1)).sum(-1))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grad = jax.grad(lambda z: models.log_number_ends(jax.nn.log_softmax(z), (10, 11)).sum())(
      jnp.asarray(x, jnp.float32))
  # d/dz_digit [log sum_other e^z - log sum_all e^z] = -p(digit)
  np.testing.assert_allclose(grad[:, 10], -np.exp(x64[:, 10]), rtol=1e-5)


def test_plan_compiles_one_pass_per_path_for_such_scales():
  """The plan tool's stand-in scores follow the config's scale: split digits on 1-10."""
  assert not plan._stand_in_scores("1-5").multi_token
  assert plan._stand_in_scores("1-5").token_ids == plan._SCORE_TOKENS.token_ids
  ten = plan._stand_in_scores("1-10")
  assert ten.multi_token and len(ten.paths[0]) == 9 and ten.sequences[-1] == (17, 16)


@pytest.mark.parametrize("method,over,says", [
    ("grpo", {}, "standard RL"),
    ("real", {"rl.scores_from_sampler": True}, "scores_from_sampler"),
    ("real", {"rl.score_temperature": 0.5}, "temperature 1"),
    ("tract", {"data.pack": True}, "data.pack"),
    ("raft", {"data.pack": True}, "data.pack"),
])
def test_what_cannot_train_on_scores_of_several_tokens_says_so(qwen, method, over, says):
  st = scores.resolve_score_tokens(qwen, scale="1-10")
  c = config_lib.base_config()
  c.method, c.data.scores = method, "1-10"
  for k, v in over.items():
    config_lib.assign(c, k, v)
  with pytest.raises(config_lib.ConfigError, match=says):
    main_lib._check_multi_token_scores(c, settings_lib.resolve(c, st.values), st)
  for ok in ("real", "sft", "raft", "tract"):  # unpacked, at the defaults: they train
    c.method, c.data.pack, c.rl.scores_from_sampler, c.rl.score_temperature = ok, False, False, 1.0
    main_lib._check_multi_token_scores(c, settings_lib.resolve(c, st.values), st)


def test_tract_rows_of_demonstrations_end_the_cot_at_the_delimiter_on_1_10(qwen):
  """TRACT on demonstrations: the CE stops before the score's tokens (two for "10") and y_hat
  is read at the last delimiter token, whatever the score's length."""
  st = scores.resolve_score_tokens(qwen, scale="1-10")
  comps = [prompts.build_target_ids(qwen, "fine answer.", k, score_tokens=st) for k in (10, 3)]
  width = max(map(len, comps)) + 2
  ct = np.full((2, width), qwen.pad_token_id, np.int32)
  cm = np.zeros((2, width), bool)
  for i, c in enumerate(comps):
    ct[i, :len(c)], cm[i, :len(c)] = c, True
  pt = np.asarray([[qwen.pad_token_id, 5, 6]] * 2, np.int32)
  b = {"prompt_tokens": pt, "prompt_mask": pt != qwen.pad_token_id, "completion_tokens": ct,
       "completion_mask": cm, "target": np.array([10.0, 3.0], np.float32),
       "valid": np.ones(2, bool)}
  assert list(supervised.score_lengths(b, st)) == [2, 1]
  lb = supervised.lm_batch(b, "tract", readout.target_token_ids(b["target"], st), st)
  for i, c in enumerate(comps):
    assert lb.tokens[i, lb.score_pos[i]] == st.delimiter_ids[-1]
    kept = lb.tokens[i][lb.loss_mask[i] > 0].tolist()
    assert kept == c[:len(c) - len(st.sequences[int(b["target"][i]) - 1]) - 1]
