r"""A judge on the reward-model benchmarks judge papers report, graded pointwise.

Commands:

  # The demo judge (warm-up SFT on the synthetic task), then every benchmark's fixtures: a smoke
  # test of the whole path in about a minute on 2 CPU cores (scores 1-5, or scores=0-4):
  python -m real_jax.main --config configs/reward_benchmarks.py:runlocal --workdir workdirs/rb
  python -m real_jax.main --config configs/reward_benchmarks.py:runlocal,scores=0-4 \
      --workdir workdirs/rb04

  # A trained judge (its export) on the real benchmarks: export each published split to JSONL
  # into one directory (names in docs/judge.md), then
  python -m real_jax.main --config configs/reward_benchmarks.py:method=eval \
      --config.model.hf_dir=exported/judge --config.data.tokenizer=exported/judge \
      --config.data.manual_dir=~/reward_benchmarks --workdir workdirs/rb_judge

Benchmarks (`eval.splits`): RewardBench v1 and 2, RM-Bench, JudgeBench, PPE's human-preference
set (every response graded on its own with one rubric; accuracy per subset, ties count half, each
benchmark's headline) and BiGGen-Bench (its own 1-5 rubrics; correlation with the human score).
results.md gets a "Reward benchmarks" table; eval/<tag>.json has every subset.

Hardware: 2 CPU cores for runlocal. Expected (runlocal): rows for the warm-up with a value in
every benchmark's headline cell — the fixtures are a handful of items each, so the numbers
test the path, not the judge.
"""

import os

from real_jax.train import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "reward_benchmarks")
BENCHMARKS = ("rewardbench", "rewardbench2", "rm_bench", "judgebench", "ppe", "biggen_bench")


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runlocal=False, method="sft", scores="1-5")
  c = config_lib.load_config(os.path.join(ROOT, "configs", "synthetic.py") +
                             f":method={a.method}" + (",runlocal" if a.runlocal else ""))
  c.unlock()
  c.data.scores = a.scores
  c.data.eval_splits = ",".join(("test",) + BENCHMARKS)
  c.data.manual_dir = FIXTURES if a.runlocal else ""
  # Benchmark prompts carry their own text and rubric: longer than the synthetic task's.
  c.data.max_prompt_len = 512 if a.runlocal else 4096
  c.data.prompt_buckets = "128,256,512" if a.runlocal else ""
  c.data.overlong = "skip"  # counted per split in results.md
  c.eval.before_training = False
  c.eval.max_items = 0  # every response of every fixture item
  if a.runlocal:
    c.train.steps = 4
  c.lock()
  return c
