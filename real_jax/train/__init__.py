"""Training, one module per concept (docs/architecture.md draws the layers):

  methods      the method table: what config.method names (stages, RL defaults, readout)
  config_lib   the config as one import: config_schema (fields, defaults, choices, ranges),
               validation (checks before anything is built), settings (resolved once)
  data_utils   the run's inputs from its config (tokenizer, sources, batchers)
  batch        the typed batches between data/rollouts and the train step
  steps        pure jitted train steps built from `real_jax.objectives`
  state        train state, AdamW and their shardings;  checkpoint  orbax checkpoints
  metrics      JSONL / TensorBoard, progress, the RL and evaluation metrics rows
  runner       the run's environment and the stage runner (resume, checkpoints, best, kill hook)
  supervised   warm-up SFT, RAFT, TRACT stages;  tract  TRACT's self-CoTs;  pretrain  the base
  rl           REAL and standard RL: rollout rounds, the buffer, the update loop
  stages       the stage functions by name and the carry between stages

Entry point: `real_jax.main`."""
