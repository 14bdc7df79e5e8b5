#!/usr/bin/env bash
# Controls and REAL's refinement weight beta, all from the embedded default's warm-up checkpoint
# (run the README's first command first: it trains that warm-up and REAL with beta = 0).
#   standard RL (GRPO as published) | the authors' binary-RLOO recipe | REAL with the exact
#   estimator | REAL beta in {0.01, 0.05, 1} | 160 more SFT steps
# About 3 minutes per run on 2 CPU cores. Results: $W/*/results.md, side by side in $W/compare.md
# and $W/compare.csv (experiments/synthetic/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEMO=${DEMO:-workdirs/synthetic}
W=${W:-workdirs/synthetic_controls}
FROM_WARMUP=(--config.init.checkpoint="$DEMO" --config.init.stage=warmup --config.warmup.steps=0
             --config.eval.after_warmup=false)
python -m real_jax.main --config configs/synthetic.py:method=grpo --workdir "$W/grpo" \
    "${FROM_WARMUP[@]}" --config.name="standard RL (GRPO)"
python -m real_jax.main --config configs/synthetic.py:method=grpo --workdir "$W/grpo_authors" \
    "${FROM_WARMUP[@]}" --config.rl.advantage=authors --config.rl.policy_loss=reinforce \
    --config.name="binary RLOO (authors' ablation)"
python -m real_jax.main --config configs/synthetic.py --workdir "$W/real_exact" \
    "${FROM_WARMUP[@]}" --config.rl.aggregation=sequence-sum --config.rl.advantage=rloo \
    --config.rl.beta=1 --config.rl.shaping=log_prob --config.rl.shaping_weight=1 \
    --config.rl.top_p=1 --config.rl.mini_batch_size=128 --config.name="REAL exact (sequence-sum)"
for beta in 0.01 0.05 1; do
  python -m real_jax.main --config configs/synthetic.py --workdir "$W/real_beta_$beta" \
      "${FROM_WARMUP[@]}" --config.rl.beta=$beta --config.name="REAL beta=$beta"
done
python -m real_jax.main --config configs/synthetic.py:method=sft --workdir "$W/sft_more" \
    --config.init.checkpoint="$DEMO" --config.init.stage=warmup --config.train.steps=160 \
    --config.optim.warmup_steps=0 --config.name="warm-up + 160 SFT steps"
python -m real_jax.tools.compare "$DEMO" "$W"/*/ --readouts rail --out "$W/compare"  # $W/compare.md, .csv
