#!/usr/bin/env bash
# Recompiles every report behind the README's plan tables (docs/plan/*.json) and prints the
# tables. Needs libtpu (pip install -e ".[tpu]"); no TPU. About 40 minutes on 2 CPU cores
# (two plans at a time; 30-80 s of compile per program).
#   bash docs/plan/make.sh            # then paste the printed tables into the README
# Rerun it after a change to the model, the sampler, the train steps or configs/prometheus.py:
# tests/test_plan.py checks the README's tables, the GPU calibration and the 8b sampler's KV
# bound against these reports.
set -uo pipefail
cd "$(dirname "$0")/../.."
export ALLOW_MULTIPLE_LIBTPU_LOAD=1  # two plan processes share libtpu
P=configs/prometheus.py
# name | config arg | topology
ROWS="
rl-1-0.6b|size=0.6b|v5e:2x4
rl-2-1.7b|size=1.7b|v5e:2x4
rl-3-4b|size=4b|v5p:2x2x1
rl-4-8b|size=8b|v5p:2x2x1
rl-5-8b-8chips|size=8b|v5p:2x2x2
rl-6-mistral-7b|size=mistral-7b|v5p:2x2x1
rl-7-14b|size=14b|v5p:2x2x4
rl-8-32b|size=32b|v5p:2x2x4
sup-1-8b-sft|size=8b,method=sft|v5p:2x2x1
sup-2-8b-raft|size=8b,method=raft|v5p:2x2x1
sup-3-8b-tract|size=8b,method=tract|v5p:2x2x1
sup-4-mistral-7b-raft|size=mistral-7b,method=raft|v5p:2x2x1
sup-5-mistral-7b-tract|size=mistral-7b,method=tract|v5p:2x2x1
"
run() {  # name arg topology
  python -m real_jax.tools.plan --config "$P:$2" --topology "$3" --json "docs/plan/$1.json" \
    --config.model.attention="${4:-chunked}" ${5:-} > "docs/plan/$1.log" 2>&1
  local rc=$?; [ $rc -le 1 ] && rm -f "docs/plan/$1.log"  # kept when the plan failed
  echo "$1: exit $rc ($(date +%T))"
}
jobs_running=0
# The tables' reports use the chunked attention (the reference); the splash kernel (the TPU
# default of model.attention=auto) has its own 8b report beside the chunked one.
ROWS="$ROWS
attention-8b-chunked|size=8b|v5p:2x2x1|chunked|--only=rl_step,rollout_sampler
attention-8b-splash|size=8b|v5p:2x2x1|splash|--only=rl_step,rollout_sampler
"
for row in $ROWS; do
  IFS='|' read -r name arg topo attn extra <<< "$row"
  run "$name" "$arg" "$topo" "$attn" "$extra" &
  jobs_running=$((jobs_running + 1))
  if [ "$jobs_running" -ge 2 ]; then wait -n; jobs_running=$((jobs_running - 1)); fi
done
wait
python -m real_jax.tools.plan --summarize docs/plan/rl-*.json
echo
python -m real_jax.tools.plan --summarize docs/plan/sup-*.json
echo
python -m real_jax.tools.plan --summarize docs/plan/attention-8b-*.json
