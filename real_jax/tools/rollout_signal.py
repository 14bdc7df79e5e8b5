r"""How much policy-gradient signal a judge's rollouts carry, per evaluation split.

  python -m real_jax.tools.rollout_signal --workdir W [--stage sft] [--prompts 64] [--group_size 8]

Loads the model of a finished run (`--stage`: which of its checkpoints; default its last
stage), samples `--group_size` CoTs for each of `--prompts` items of every evaluation split with
the run's own RL rollout (`rl.rollout_round`: the sampler, the scoring pass and the rewards of
training, at the run's `rl` settings), and reports per split the share of groups whose rewards
are not all equal under the binary (exact-match) reward and under the regression reward, the
exact-match rate, the policy entropy per CoT token and the share of rows without a score. A
group whose rewards are all equal gives no policy gradient: where binary rewards are constant
(all right or all wrong) but regression rewards are not, only REAL's reward can still rank the
CoTs. Writes <out>/rollout_signal.json (default out: <workdir>/rollout_signal).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax
from absl import logging

from real_jax import main as main_lib
from real_jax import readout
from real_jax.train import config_lib, data_utils, rl
from real_jax.train import settings as settings_lib
from real_jax.train.methods import METHODS
from real_jax.train.metrics import RolloutStats, rl_update_metrics

__all__ = ["KEYS", "rollout_signal", "main"]

KEYS = ("signal_binary", "signal_regression", "binary_acc", "entropy", "truncated_frac",
        "eos_before_delimiter_frac")


def rollout_signal(run, params, *, method: str, prompts: int, group_size: int,
                   seed: int = 0) -> dict[str, dict[str, float]]:
  """split -> the rollout statistics (`KEYS`) of `prompts` items x `group_size` CoTs."""
  c = run.config
  score_tokens = run.vocab.score_tokens
  rl_settings = settings_lib.rl_settings(c, score_tokens.values, method=method)
  settings = dataclasses.replace(rl.RolloutSettings.from_config(c, rl_settings),
                                 group_size=group_size, filter="all")
  score_fn = readout.make_score_fn(
      run.graphdef, score_tokens, run.mesh, score_temperature=c.rl.score_temperature,
      renormalize=c.rl.renormalize, sample_temperature=c.rl.temperature, top_p=c.rl.top_p,
      top_k=c.rl.top_k, greedy=False, response_width=c.rl.max_response_len + 1)
  out = {}
  for split, source in run.sources.evals.items():
    n = min(prompts, len(source))
    batcher = data_utils.make_batcher(c, source, run.vocab.tokenizer, score_tokens,
                                      batch_size=min(n, c.rl.prompts_per_step),
                                      with_targets=False, shuffle=False, num_epochs=1,
                                      drop_remainder=False)
    stats, seen = RolloutStats(), 0
    for i, batch in enumerate(batcher):
      if seen >= n:
        break
      # Exactly n prompts in all; a last partial batch ends with padding rows (valid = 0).
      take = min(n - seen, int(batch["valid"].sum()))
      batch = {k: v[:take] for k, v in batch.items()}
      r = rl.rollout_round(run.graphdef, params, None, batch,
                           jax.random.fold_in(jax.random.PRNGKey(seed), i), settings=settings,
                           advantages=rl_settings.advantages, score_fn=score_fn,
                           score_tokens=score_tokens,
                           mesh=run.mesh, pad_id=run.vocab.pad_id)
      stats = stats + r.stats
      seen += take
    m = rl_update_metrics(stats, [], rounds=0, kept_prompts=0, t_rollout=1.0, t_scoring=0.0,
                          t_update=0.0)
    out[split] = {"prompts": seen, "group_size": group_size, **{k: m[k] for k in KEYS}}
    logging.info("[rollout_signal] %s: %s", split, out[split])
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", required=True, help="a finished real_jax.main run")
  p.add_argument("--stage", default="", help="its checkpoint stage (default: its last stage)")
  p.add_argument("--method", default="", help="whose rewards: real | grpo (default: the run's, "
                 "or real for a supervised run)")
  p.add_argument("--prompts", type=int, default=64, help="items per evaluation split")
  p.add_argument("--group_size", type=int, default=0,
                 help="CoTs per item (default: the run's rl.group_size)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="", help="output directory (default <workdir>/rollout_signal)")
  a = p.parse_args(argv)
  run_json = os.path.join(a.workdir, "run.json")
  if not os.path.exists(run_json):
    print(f"rollout_signal: {a.workdir} has no run.json (not a real_jax.main run directory)",
          file=sys.stderr)
    return 2
  with open(run_json) as f:
    config = config_lib.with_defaults(json.load(f)["config"])
  rl_methods = [n for n, m in METHODS.items() if m.rl is not None]
  method = a.method or (config.method if config.method in rl_methods else "real")
  group_size = a.group_size or int(config.rl.group_size)
  if method not in rl_methods or a.prompts < 1 or group_size < 2:
    print(f"rollout_signal: --method must be one of {rl_methods}, --prompts >= 1, "
          "--group_size >= 2", file=sys.stderr)
    return 2
  config.method = "eval"
  config.init.checkpoint = os.path.abspath(a.workdir)
  config.init.stage = a.stage
  config.eval.at_end = False
  out_dir = a.out or os.path.join(a.workdir, "rollout_signal")
  try:
    run, _, params = main_lib.setup(config, out_dir)
  except (ValueError, FileNotFoundError) as e:
    print(f"rollout_signal: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  res = rollout_signal(run, params, method=method, prompts=a.prompts, group_size=group_size,
                       seed=a.seed)
  run.writer.close()
  with open(os.path.join(out_dir, "rollout_signal.json"), "w") as f:
    json.dump({"workdir": os.path.abspath(a.workdir), "stage": a.stage, "method": method,
               "splits": res}, f, indent=1)
  print("| Split | groups | " + " | ".join(KEYS) + " |")
  print("|---|---:|" + "---:|" * len(KEYS))
  for sp, v in res.items():
    print(f"| {sp} | {v['prompts']} × {v['group_size']} | " +
          " | ".join(f"{v[k]:.3f}" for k in KEYS) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
