"""Training, one module per concept (docs/architecture.md draws the layers):

  config_lib   the config schema, validation, the stages of a method
  data_utils   the run's inputs from its config (tokenizer, sources, batchers)
  batch        the typed batches between data/rollouts and the train step
  steps        pure jitted train steps built from `real_jax.objectives`
  state        train state, AdamW and their shardings;  checkpoint  orbax checkpoints
  metrics      JSONL / TensorBoard, progress, the RL and evaluation metrics rows
  runner       the run's environment and the stage runner (resume, checkpoints, best, kill hook)
  supervised   warm-up SFT, RAFT, TRACT stages;  tract  TRACT's self-CoTs;  pretrain  the base
  rl           REAL and standard RL: rollout rounds, the buffer, the update loop

Entry point: `real_jax.main`."""
