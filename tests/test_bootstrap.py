"""real_jax.bootstrap: vectorised metrics equal scipy's, resamples draw seeds then items, and
the paired difference shares its draws between the two judges."""
import numpy as np
import pytest

from real_jax import bootstrap, evaluate


def _judges(rng, s=3, n=60):
  target = np.round(rng.uniform(1, 5, size=n) * 3) / 3  # means of 3 graders: many ties
  a = target + rng.normal(0, 0.6, size=(s, n))
  b = a + rng.normal(0, 0.1, size=(s, n))  # B: A plus a little noise of its own
  return np.broadcast_to(target, (s, n)).copy(), np.round(a * 2) / 2, np.round(b * 2) / 2


@pytest.mark.parametrize("metric", bootstrap.METRICS)
def test_metrics_equal_scipy_on_resamples_with_repeated_items(metric):
  rng = np.random.default_rng(0)
  target, a, _ = _judges(rng)
  seeds, items = bootstrap.bootstrap_indices(3, target.shape[1], n_boot=5, seed=1)
  rows = seeds[..., None]
  got = bootstrap.metric_rows(metric, a[rows, items], target[rows, items])  # [5, 3]
  for b in range(5):
    for s in range(3):
      want = evaluate.correlations(a[seeds[b, s], items[b, s]], target[seeds[b, s], items[b, s]])
      np.testing.assert_allclose(got[b, s], want[metric], rtol=1e-10, atol=1e-12)
  const = bootstrap.metric_rows(metric, np.ones((1, 10)), np.arange(10.0)[None])
  assert np.isnan(const[0]) if metric != "mse" else np.isfinite(const[0])


def test_indices_draw_seeds_then_items_per_drawn_seed():
  seeds, items = bootstrap.bootstrap_indices(5, 40, n_boot=400, seed=0)
  assert seeds.shape == (400, 5) and items.shape == (400, 5, 40)
  assert seeds.min() == 0 and seeds.max() == 4 and items.min() == 0 and items.max() == 39
  # Some resamples repeat a seed, and its two draws pick different items.
  repeated = [(b, np.nonzero(seeds[b] == seeds[b][0])[0]) for b in range(400)]
  b, pos = next((b, p) for b, p in repeated if len(p) > 1)
  assert not np.array_equal(items[b, pos[0]], items[b, pos[1]])


def test_seeds_are_resampled():
  """pred = target + c_s: each seed's MSE is c_s² whatever the items, so the spread of the
  bootstrap distribution comes from the seed draws alone."""
  rng = np.random.default_rng(1)
  target = np.tile(rng.uniform(1, 5, size=50), (4, 1))
  c = np.array([0.0, 0.5, 1.0, 2.0])
  iv = bootstrap.interval("mse", target + c[:, None], target, n_boot=2000)
  np.testing.assert_allclose(iv.estimate, np.mean(c ** 2))
  assert iv.low < 0.5 < 2.0 < iv.high  # mean of 4 draws of {0, .25, 1, 4}: spread over seeds
  one = bootstrap.interval("mse", target[:1] + 1.0, target[:1], n_boot=200)
  assert one.low == one.high == 1.0  # one seed, a constant error: no spread at all


@pytest.mark.parametrize("metric", bootstrap.METRICS)
def test_paired_difference_shares_the_draws(metric):
  rng = np.random.default_rng(2)
  target, a, b = _judges(rng)
  same = bootstrap.paired_difference(metric, a, a, target, n_boot=300)
  assert same.estimate == same.low == same.high == 0.0
  d = bootstrap.paired_difference(metric, a, b, target, n_boot=500)
  ia = bootstrap.interval(metric, a, target, n_boot=500)
  want = (np.mean(bootstrap.metric_rows(metric, a, target))
          - np.mean(bootstrap.metric_rows(metric, b, target)))
  np.testing.assert_allclose(d.estimate, want, rtol=1e-12)
  assert d.low <= d.estimate <= d.high
  # What A and B share cancels: the paired interval is far narrower than A's own.
  assert (d.high - d.low) < 0.5 * (ia.high - ia.low), (d, ia)
  assert (d.n_seeds, d.n_items, d.n_boot) == (3, 60, 500)


def test_paired_difference_detects_a_real_gap_and_rejects_misaligned_items():
  rng = np.random.default_rng(3)
  target, a, _ = _judges(rng, s=2, n=120)
  worse = a + rng.normal(0, 1.0, size=a.shape)
  d = bootstrap.paired_difference("pearson", a, worse, target[0], n_boot=500)
  assert d.excludes_zero() and d.low > 0
  with pytest.raises(ValueError, match=r"\[seeds, items\]"):
    bootstrap.paired_difference("pearson", a, worse[:, :-1], target)
  with pytest.raises(ValueError, match="unknown metric"):
    bootstrap.interval("r2", a, target)
