"""Several CoTs per item (eval.num_cots, Judge.grade(num_cots=k)): the mean of ŷ and the vote."""
import numpy as np
import pytest

import real_jax
from real_jax import readout
from run_helpers import tiny_random_model
from test_judge import _byte_level

pytestmark = pytest.mark.usefixtures("fast_compiles_module")


def test_vote_majority_ties_and_nothing_valid():
  sampled = np.array([[3, 3, 4, 4], [2, 4, 5, 1], [5, 1, 1, 5], [2, 2, 5, 1], [4, 4, 4, 4]], float)
  valid = np.ones_like(sampled, bool)
  valid[3, 0] = False  # one 2 does not count: 2, 5, 1 tie -> mean 2.67 -> 3
  valid[4] = False
  got, ok = readout.vote(sampled, valid, (1., 2., 3., 4., 5.), 3.0)
  # 3/4 tie -> 3.5 -> 4 (half up); 2,4,5,1 all tie -> 3; 5/1 tie -> 3; nothing valid -> midpoint
  assert got.tolist() == [4., 3., 3., 3., 3.] and ok.tolist() == [True] * 4 + [False]
  odd, _ = readout.vote(np.array([[1., 3.]]), np.ones((1, 2), bool), (1., 3., 5.), 3.0)
  assert odd.tolist() == [3.]  # the tied scores' mean 2 -> the nearest score, halves up


@pytest.fixture(scope="module")
def judge():
  graphdef, params, mesh = tiny_random_model(seed=5)
  return real_jax.Judge(graphdef, params, _byte_level(True), mesh=mesh, max_prompt_len=64)


RECORD = {"prompt": "Is 2+2=4 right? Score it."}  # a ready prompt: short, fast to sample


def test_grades_do_not_depend_on_the_batch(judge):
  recs = [{"prompt": f"Is 2+2={r} right? Score it."} for r in ("4", "5", "four", "22")]
  alone = judge.grade(recs, batch_size=1, max_new_tokens=6, seed=2, num_cots=2)
  together = judge.grade(recs, batch_size=4, max_new_tokens=6, seed=2, num_cots=2)
  assert [g.cots for g in alone] == [g.cots for g in together]
  for a, b in zip(alone, together):
    assert a.cot_y_hats == pytest.approx(b.cot_y_hats, abs=1e-5)
    assert a.cot_sampled_scores == b.cot_sampled_scores
  # The first record alone with the same seed: its own draws, whatever came after it.
  assert judge.grade(recs[:1], max_new_tokens=6, seed=2, num_cots=2)[0].cots == alone[0].cots


def test_k_cots_mean_and_vote(judge):
  """k CoTs of a record: ŷ and π are the means of the CoTs' (the `force` rule keeps each
  CoT's ŷ), the sampled score their vote; the first CoT is the one-CoT grade's."""
  k = 4
  many = judge.grade([RECORD], max_new_tokens=6, seed=3, num_cots=k)[0]
  one = judge.grade([RECORD], max_new_tokens=6, seed=3)[0]
  assert len(many.cots) == k and len(set(many.cots)) > 1 and many.cots[0] == one.cot
  assert many.cot_y_hats[0] == pytest.approx(one.y_hat, abs=1e-5)
  assert many.y_hat == pytest.approx(np.mean(many.cot_y_hats), abs=1e-5)
  values = np.array(sorted(many.score_probs))
  assert many.y_hat == pytest.approx(sum(v * many.score_probs[v] for v in values), abs=1e-5)
  sampled = np.array([[s if s is not None else 0 for s in many.cot_sampled_scores]])
  want, ok = readout.vote(sampled, np.array([[s is not None for s in many.cot_sampled_scores]]),
                          judge.score_tokens.values, 3.0)
  assert many.sampled_score == (float(want[0]) if ok[0] else None)
  assert len(one.cots) == 1 and one.cot_y_hats == (pytest.approx(one.y_hat),)
  with pytest.raises(ValueError, match="num_cots"):
    judge.grade([RECORD], num_cots=0)
