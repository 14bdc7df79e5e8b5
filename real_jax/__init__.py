"""real_jax: REAL (regression-aware RL) and baselines for LLM-as-a-judge in JAX/Flax.

`real_jax.Judge` (from `real_jax.judging`) is imported on first use, so `import
real_jax.objectives` stays light (jax only).
"""

__all__ = ["Judge", "Grade"]


def __getattr__(name):
  if name in ("Judge", "Grade"):
    from real_jax import judging
    return getattr(judging, name)
  raise AttributeError(f"module 'real_jax' has no attribute {name!r}")
