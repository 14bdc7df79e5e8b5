"""Training: config schema and validation (`config_lib`), train state and AdamW (`state`), pure
jitted steps built from `real_jax.objectives` (`steps`), group rollouts and advantages
(`rollout`), the stage loops (`loops`), orbax checkpoints (`checkpoint`), metrics and progress
(`metrics`), and adapters to `real_jax.data` (`data_utils`). Entry point: `real_jax.main`."""
