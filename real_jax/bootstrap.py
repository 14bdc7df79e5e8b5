"""Bootstrap intervals over seeds and items, and the paired difference of two judges.

A judge's metric on an evaluation split varies with the items drawn and with the training seed.
`bootstrap_indices` draws both: for each of `n_boot` resamples, `n_seeds` seeds with
replacement, then, for each drawn seed, `n_items` items with replacement. A metric of a resample
is the mean over its drawn seeds of the metric on that seed's drawn items. `interval` gives the
95% percentile interval of one judge; `paired_difference` the interval of the difference
between two judges evaluated on the same items and seeds, with the SAME draws for both, so what
the judges share (which items are hard, which seed was lucky) cancels.

Metrics (`METRICS`): Pearson, Spearman and Kendall τ-b (the definitions of `scipy.stats`, ties
included; a bootstrap resample repeats items, which count as tied pairs exactly as scipy
counts them) and MSE, vectorised over resamples. Shapes: predictions and targets are [S, N]
(S seeds, the same N items in every seed, in the same order).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from scipy import stats

__all__ = ["METRICS", "Interval", "bootstrap_indices", "metric_rows", "interval",
           "paired_difference"]

METRICS = ("pearson", "spearman", "kendall", "mse")
KENDALL_PAIRS = 1 << 22  # pair signs per block of Kendall's [block, N, N] arrays (32 MiB)


class Interval(NamedTuple):
  """A point estimate (the metric on the data as observed: mean over its seeds) and the 2.5 /
  97.5 percentiles of its bootstrap distribution; `n_boot` resamples of `n_seeds` x `n_items`."""
  estimate: float
  low: float
  high: float
  n_seeds: int
  n_items: int
  n_boot: int

  def excludes_zero(self) -> bool:
    return self.low > 0 or self.high < 0

  def format(self, scale: float = 1.0, digits: int = 3, signed: bool = True) -> str:
    """"+1.2 [+0.3, +2.1]*" (x scale): "*" where the interval excludes 0 at the precision
    shown."""
    lo, hi = round(self.low * scale, digits), round(self.high * scale, digits)
    sign = "+" if signed else ""
    star = "*" if lo > 0 or hi < 0 else ""
    return (f"{self.estimate * scale:{sign}.{digits}f} [{lo:{sign}.{digits}f}, "
            f"{hi:{sign}.{digits}f}]{star}")


def bootstrap_indices(n_seeds: int, n_items: int, n_boot: int = 1000,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(seeds [B, S], items [B, S, N]): per resample, S seeds drawn with replacement, then N items
  drawn with replacement for each drawn seed (independently per drawn seed)."""
  rng = np.random.default_rng([seed, n_seeds, n_items])
  seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
  items = rng.integers(0, n_items, size=(n_boot, n_seeds, n_items))
  return seeds, items


def _pearson(p: np.ndarray, t: np.ndarray) -> np.ndarray:
  p = p - p.mean(-1, keepdims=True)
  t = t - t.mean(-1, keepdims=True)
  den = np.sqrt((p * p).sum(-1) * (t * t).sum(-1))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, (p * t).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _spearman(p: np.ndarray, t: np.ndarray) -> np.ndarray:
  return _pearson(stats.rankdata(p, axis=-1), stats.rankdata(t, axis=-1))


def _kendall(p: np.ndarray, t: np.ndarray) -> np.ndarray:
  """τ-b = Σ_{i<j} sgn(Δp) sgn(Δt) / sqrt(Σ sgn(Δp)² · Σ sgn(Δt)²) per row (scipy's τ-b)."""
  out = np.empty(p.shape[:-1])
  n = p.shape[-1]
  flat_p, flat_t, flat_o = p.reshape(-1, n), t.reshape(-1, n), out.reshape(-1)
  block = max(1, KENDALL_PAIRS // (n * n))
  for i in range(0, len(flat_p), block):
    bp, bt = flat_p[i:i + block], flat_t[i:i + block]
    sp = np.sign(bp[:, :, None] - bp[:, None, :])
    st = np.sign(bt[:, :, None] - bt[:, None, :])
    num = (sp * st).sum((1, 2))
    den = np.sqrt((sp * sp).sum((1, 2)) * (st * st).sum((1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
      flat_o[i:i + block] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
  return out


def _mse(p: np.ndarray, t: np.ndarray) -> np.ndarray:
  return ((p - t) ** 2).mean(-1)


METRIC_FNS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "pearson": _pearson, "spearman": _spearman, "kendall": _kendall, "mse": _mse}


def metric_rows(metric: str, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """The metric of each row: [..., N] predictions and targets -> [...] (NaN where a side is
  constant, as `evaluate.correlations`)."""
  if metric not in METRIC_FNS:
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
  return METRIC_FNS[metric](np.asarray(pred, np.float64), np.asarray(target, np.float64))


def _as_seeds(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x[None] if x.ndim == 1 else x


def _resampled(metric: str, pred: np.ndarray, target: np.ndarray, seeds: np.ndarray,
               items: np.ndarray) -> np.ndarray:
  """[B] the metric of each resample: mean over its drawn seeds of the metric on its items."""
  rows = seeds[..., None]  # [B, S, 1] selects the seed of each drawn item
  vals = metric_rows(metric, pred[rows, items], target[rows, items])  # [B, S]
  with np.errstate(invalid="ignore"):
    return np.nanmean(vals, axis=-1) if np.isfinite(vals).any() else vals.mean(-1)


def _check(pred: np.ndarray, target: np.ndarray) -> None:
  if pred.shape != target.shape or pred.ndim != 2 or pred.shape[1] < 2:
    raise ValueError(f"predictions {pred.shape} and targets {target.shape} must both be "
                     "[seeds, items] with at least 2 items")


def interval(metric: str, pred, target, *, n_boot: int = 1000, seed: int = 0) -> Interval:
  """One judge's metric with its 95% interval. pred, target: [S, N] (or [N] for one seed)."""
  pred, target = _as_seeds(pred), _as_seeds(target)
  _check(pred, target)
  s, n = pred.shape
  seeds, items = bootstrap_indices(s, n, n_boot, seed)
  dist = _resampled(metric, pred, target, seeds, items)
  est = float(np.nanmean(metric_rows(metric, pred, target)))
  return Interval(est, float(np.nanpercentile(dist, 2.5)), float(np.nanpercentile(dist, 97.5)),
                  s, n, n_boot)


def paired_difference(metric: str, pred_a, pred_b, target, *, n_boot: int = 1000,
                      seed: int = 0) -> Interval:
  """metric(A) − metric(B) with its 95% interval; A and B on the same [S, N] items and seeds
  (target [S, N] or [N]), every resample drawing the same seeds and items for both."""
  pred_a, pred_b = _as_seeds(pred_a), _as_seeds(pred_b)
  target = np.broadcast_to(_as_seeds(target), pred_a.shape)
  _check(pred_a, target)
  _check(pred_b, target)
  s, n = pred_a.shape
  seeds, items = bootstrap_indices(s, n, n_boot, seed)
  dist = (_resampled(metric, pred_a, target, seeds, items)
          - _resampled(metric, pred_b, target, seeds, items))
  est = float(np.nanmean(metric_rows(metric, pred_a, target))
              - np.nanmean(metric_rows(metric, pred_b, target)))
  return Interval(est, float(np.nanpercentile(dist, 2.5)), float(np.nanpercentile(dist, 97.5)),
                  s, n, n_boot)
