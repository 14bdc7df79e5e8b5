#!/usr/bin/env bash
# REAL's refinement weight beta on the synthetic task (DESIGN §2.5 asks for beta in {0, 0.01, 1}).
# All runs start from one warm-up: the first run trains it, the others reuse its checkpoint.
# ~4 minutes per REAL run on 2 CPU cores after the warm-up.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-workdirs/sweep_beta}
python -m real_jax.main --config configs/synthetic.py:method=sft --workdir "$W/warmup" \
    --config.name="warm-up (SFT)"
for beta in 0 0.01 0.05 1; do
  python -m real_jax.main --config configs/synthetic.py --workdir "$W/beta_$beta" \
      --config.init.checkpoint="$W/warmup" --config.warmup.steps=0 \
      --config.rl.beta=$beta --config.name="REAL beta=$beta" --config.eval.before_training=false
done
for d in "$W"/beta_*; do tail -n +1 "$d/results.md" | sed -n 3,6p; done
