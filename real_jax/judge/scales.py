"""Score scales: which scores a judge writes after the delimiter, and what each is worth.

A scale is given as a string (the config's `judge.scores`):

  "1-5"      the integers 1..5 (the default: Prometheus, Feedback Collection, the paper)
  "0-4"      HelpSteer-style; "1-10" MT-Bench / JudgeLRM-style; "0-1" pass / fail
  "1,3,5"    explicit labels: any strictly increasing non-negative integers

Every label is a non-negative integer written in decimal (the value is the number itself), so
the parser, the rewards and the RAIL readout ŷ = Σ_k v_k π(k) read it as that number. Negative
scores are refused: -1 marks "no score" in the data and the rollouts.

The scale drives the prompt (rules 2 and 3 name its range, the reference answer is the top
score's, the rubric lists one description per label), the score tokens
(`judge.scores.resolve_score_tokens`), parsing, targets and rewards. This module is a leaf.
"""
from __future__ import annotations

import dataclasses
import re

__all__ = ["ScoreScale", "DEFAULT_SCALE", "as_scale"]

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class ScoreScale:
  """The scores a judge can give, lowest first (`labels[i]` is worth `values[i]`)."""

  labels: tuple[str, ...]

  def __post_init__(self):
    if len(self.labels) < 2:
      raise ValueError(f"a score scale needs at least 2 scores, got {list(self.labels)}")
    for s in self.labels:
      if not s.isdigit() or (len(s) > 1 and s[0] == "0"):
        raise ValueError(f"score label {s!r} is not a non-negative integer in plain decimal "
                         "(e.g. '0', '7', '10')")
    v = [int(s) for s in self.labels]
    if any(b <= a for a, b in zip(v, v[1:])):
      raise ValueError(f"score labels must increase strictly, got {list(self.labels)}")

  @classmethod
  def parse(cls, spec: str) -> ScoreScale:
    """"lo-hi" (inclusive) or comma-separated labels; ValueError naming the problem."""
    spec = str(spec).strip()
    m = _RANGE.match(spec)
    if m:
      lo, hi = int(m.group(1)), int(m.group(2))
      if hi <= lo:
        raise ValueError(f"score range {spec!r}: the top must exceed the bottom (e.g. '1-5')")
      if hi - lo > 100:
        raise ValueError(f"score range {spec!r} has {hi - lo + 1} scores; at most 101")
      return cls(tuple(str(k) for k in range(lo, hi + 1)))
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) < 2 or not all(parts):
      raise ValueError(f"score scale {spec!r}: expected 'lo-hi' (e.g. '1-5', '0-4', '1-10') or "
                       "comma-separated integer labels (e.g. '0,1')")
    return cls(tuple(parts))

  @property
  def values(self) -> tuple[float, ...]:
    return tuple(float(s) for s in self.labels)

  @property
  def lo(self) -> int:
    return int(self.labels[0])

  @property
  def hi(self) -> int:
    return int(self.labels[-1])

  @property
  def spec(self) -> str:
    """The canonical string ("1-5" for a contiguous range, else "a,b,c")."""
    v = [int(s) for s in self.labels]
    if v == list(range(v[0], v[-1] + 1)):
      return f"{v[0]}-{v[-1]}"
    return ",".join(self.labels)

  @property
  def midpoint(self) -> float:
    """The mean of the values: what an unreadable output predicts (`eval.invalid=midpoint`)."""
    return sum(self.values) / len(self.labels)

  def contains(self, value: float) -> bool:
    """Whether `value` is one of the scores (an integer label)."""
    return float(value).is_integer() and str(int(value)) in self.labels

  def within(self, value: float) -> bool:
    """Whether `value` lies in [lo, hi] (a mean of graders' labels may fall between scores)."""
    return self.lo <= float(value) <= self.hi

  def __str__(self) -> str:
    return self.spec


DEFAULT_SCALE = ScoreScale.parse("1-5")


def as_scale(scale: ScoreScale | str | None) -> ScoreScale:
  """A `ScoreScale` from itself, its string, or None (the default 1-5)."""
  if scale is None:
    return DEFAULT_SCALE
  if isinstance(scale, ScoreScale):
    return scale
  return ScoreScale.parse(scale)
