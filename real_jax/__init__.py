"""real_jax: REAL (regression-aware RL) and baselines for LLM-as-a-judge in JAX/Flax."""
