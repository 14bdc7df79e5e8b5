"""Named choices: every estimator, loss, reward and filter the config offers, in one place.

A registry maps a config name to a function (Tunix's function registry is the model). The
functions themselves live where their math does (`real_jax.objectives`) and register themselves
with a decorator when that module is imported; the config schema (`--help`, validation) and the
trainer read these registries, so a new entry is a config choice at once:

  from real_jax import objectives as obj      # fills the registries

  @obj.register_reward("absolute")             # = registry.REWARDS.register("absolute")
  def absolute_reward(prediction, target):     # prediction [N], target [N] -> reward [N]
    return -jnp.abs(prediction - target)

  # then: --config.rl.reward=absolute

| registry | config field | signature |
|---|---|---|
| `ADVANTAGE_ESTIMATORS` | `rl.estimator` | `fn(rewards [..., n], mask [..., n]) -> centred rewards [..., n]`, 0 where masked |
| `POLICY_LOSSES` | `rl.policy_loss` | `fn(log_probs [B, T], advantages [B, T], *, old_log_probs, clip_eps, clip_eps_high) -> (per-token loss [B, T], clipped [B, T] float)` |
| `REWARDS` | `rl.reward` | `fn(prediction [N], target [N]) -> reward [N]` (y_hat for "regression", the sampled score for "binary") |
| `SHAPINGS` | `rl.shaping` | `fn(log pi(y*) [..., n]) -> shaping reward [..., n]`, or None (no shaping term) |
| `KL_ESTIMATORS` | `rl.kl_estimator` | `fn(log_pi [B, T], log_pi_ref [B, T]) -> [B, T]` |
| `GROUP_FILTERS` | `rl.filter` | `fn(binary rewards [G, n]) -> keep [G] bool` |
| `LOSSES` | (the objectives by name) | `fn(...) -> (loss, metrics)` |
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, MutableMapping

__all__ = [
    "Registry", "ADVANTAGE_ESTIMATORS", "POLICY_LOSSES", "REWARDS", "SHAPINGS", "KL_ESTIMATORS",
    "GROUP_FILTERS", "LOSSES", "register_advantage_estimator", "register_policy_loss",
    "register_reward", "register_shaping", "register_kl_estimator", "register_group_filter",
    "register_loss",
]


class Registry(MutableMapping[str, Any]):
  """Name -> function (or entry), for one kind of choice: a mapping (`name in r`, `r[name]`,
  `sorted(r)`, `r[name] = fn` to replace, `del r[name]`) with `register(name)` (a decorator; a
  name registers once) and `lookup(name)` (a one-line error naming the registered choices)."""

  def __init__(self, kind: str):
    self.kind = kind
    self._fns: dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    def deco(fn):
      if name in self._fns:
        raise ValueError(f"{self.kind} {name!r} is already registered")
      self._fns[name] = fn
      return fn
    return deco

  def unregister(self, name: str) -> None:
    """Removes `name` (tests that register a temporary entry)."""
    del self._fns[name]

  def lookup(self, name: str) -> Any:
    try:
      return self._fns[name]
    except KeyError:
      raise ValueError(f"unknown {self.kind} {name!r}; registered: {sorted(self._fns)}") from None

  def __getitem__(self, name: str) -> Any:
    return self._fns[name]

  def __setitem__(self, name: str, fn: Any) -> None:
    self._fns[name] = fn

  def __delitem__(self, name: str) -> None:
    del self._fns[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._fns)

  def __len__(self) -> int:
    return len(self._fns)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}: {sorted(self._fns)})"


ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")
REWARDS = Registry("reward")
SHAPINGS = Registry("shaping")
KL_ESTIMATORS = Registry("KL estimator")
GROUP_FILTERS = Registry("group filter")
LOSSES = Registry("loss")

register_advantage_estimator = ADVANTAGE_ESTIMATORS.register
register_policy_loss = POLICY_LOSSES.register
register_reward = REWARDS.register
register_shaping = SHAPINGS.register
register_kl_estimator = KL_ESTIMATORS.register
register_group_filter = GROUP_FILTERS.register
register_loss = LOSSES.register
