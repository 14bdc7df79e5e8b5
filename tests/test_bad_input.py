"""Bad input and bad configs get one clear answer, and a non-finite update never reaches the
weights: each case through `real_jax.main` (in process, and the CLI's one line and exit status)."""

import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from real_jax import main as main_lib
from real_jax import models
from real_jax.data import batching
from real_jax.train import checkpoint as ckpt_lib
from real_jax.train import config_lib, runner, validation
from real_jax.train.config_lib import ConfigError
from real_jax.train.metrics import read_metrics
from run_helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.usefixtures("fast_compiles_module")  # see conftest.py


def test_negative_counts_are_config_errors(shared, tmp_path):
  for field in ("rl.steps", "warmup.steps", "train.steps", "rl.epochs"):
    c = tiny_config(shared, "real", **{field: -3})
    with pytest.raises(ConfigError, match=rf"config\.{field}=-3 is negative"):
      main_lib.run(c, str(tmp_path / field))


def test_a_response_limit_without_room_for_the_score_is_a_config_error(shared, tmp_path):
  c = tiny_config(shared, "real", **{"rl.max_response_len": 1})
  with pytest.raises(ConfigError, match=r"config\.rl\.max_response_len=1 cannot hold the "
                                        r"delimiter \(\d+ tokens\) and a score token"):
    main_lib.run(c, str(tmp_path / "rl"))
  c = tiny_config(shared, "sft", **{"eval.max_response_len": 2})
  with pytest.raises(ConfigError, match=r"config\.eval\.max_response_len=2 cannot hold"):
    main_lib.run(c, str(tmp_path / "eval"))


def test_a_prompt_limit_shorter_than_every_prompt_stops_with_the_counts(shared, tmp_path):
  """Before: the batcher skipped every record, epoch after epoch, forever."""
  c = tiny_config(shared, "sft", **{"data.max_prompt_len": 32, "data.prompt_buckets": "32",
                                    "eval.at_end": False, "eval.after_warmup": False})
  with pytest.raises(batching.TooFewRowsError,
                     match=r"0 of 64 records are usable \(skipped: prompt_far_too_long 64\)"):
    main_lib.run(c, str(tmp_path / "a"))
  with pytest.raises(config_lib.ConfigError, match=r"evaluation split 'test' has no usable item "
                                                   r"of 8 \(prompt_far_too_long 8\)"):
    main_lib.run(tiny_config(shared, "sft", **{"data.max_prompt_len": 32,
                                               "data.prompt_buckets": "32"}), str(tmp_path / "b"))


def test_a_split_smaller_than_one_batch_stops_with_both_numbers(shared, tmp_path):
  """Before: `dropped_remainder` counted hundreds of thousands of rows, with no log line."""
  c = tiny_config(shared, "sft", **{"train.batch_size": 128})  # 64 training records
  with pytest.raises(batching.TooFewRowsError, match=r"\d+ of 64 records are usable.*fewer "
                                                     r"than one batch of 128"):
    main_lib.run(c, str(tmp_path / "a"))


def _params_at(workdir, stage, step, like):
  ck = ckpt_lib.Checkpointer(ckpt_lib.stage_dir(workdir, stage), async_save=False)
  p = ck.restore_params(step, like)
  ck.close()
  return p


def test_a_nan_update_is_skipped_counted_and_the_run_goes_on(shared, tmp_path):
  """A NaN update at optimiser step 2 (debug.nan_update_step, as a NaN learning rate gives):
  finite loss and gradient. The step is skipped and counted in metrics.jsonl, the parameters after it equal those
  before it, and the later steps train."""
  wd = str(tmp_path / "run")
  c = tiny_config(shared, "sft", **{"train.steps": 4, "train.lr": 5e-3, "log.every": 1,
                                    "checkpoint.every": 1, "checkpoint.max_to_keep": 5,
                                    "debug.nan_update_step": 2,
                                    "eval.at_end": False})
  main_lib.run(c, wd)
  rows = read_metrics(wd, "sft")
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert [r["applied"] for r in rows] == [1.0, 0.0, 1.0, 1.0]
  assert [r["skipped"] for r in rows] == [0, 1, 1, 1]
  assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in rows)
  _, like = models.abstract_model(config_lib.preset_model(c, 234))  # the synthetic tokenizer
  p1, p2, p3 = (_params_at(wd, "sft", s, like) for s in (1, 2, 3))
  for a, b, d in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), jax.tree.leaves(p3)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # step 2 changed nothing
    assert np.isfinite(np.asarray(d)).all()
  assert any(not np.array_equal(np.asarray(a), np.asarray(d))
             for a, d in zip(jax.tree.leaves(p2), jax.tree.leaves(p3)))  # step 3 trained


@pytest.mark.parametrize("log_every,nan_steps,reached,stop,skipped", [
    (1, None, 3, 3, 3), (2, None, 3, 4, 4),
    # A run of NaN updates that starts and ends between two log steps (steps 2-4 of 5).
    (5, (2, 3), 4, 5, 3)])
def test_non_finite_steps_in_a_row_stop_the_run(shared, tmp_path, monkeypatch, log_every,
                                                nan_steps, reached, stop, skipped):
  """Training that diverges stops after optim.max_skipped_in_a_row (3) skipped steps in a row,
  read from the per-step flags at the log steps (they stay on the device between them): with
  log.every 2 the limit reached at step 3 is seen at step 4; a run of 3 that ends between two
  log steps is still seen. Divergence is every update non-finite (a NaN learning rate;
  validation, which rejects it, is bypassed) or debug.nan_update_step/count."""
  monkeypatch.setattr(validation, "check_ranges", lambda config: None)
  wd = str(tmp_path / "run")
  over = {"train.steps": 10, "optim.max_skipped_in_a_row": 3, "checkpoint.every": 1,
          "log.every": log_every}
  if nan_steps is None:
    over["train.lr"] = float("nan")
  else:
    over["debug.nan_update_step"], over["debug.nan_update_count"] = nan_steps
  c = tiny_config(shared, "sft", **over)
  with pytest.raises(runner.TooManySkippedSteps,
                     match=rf"stage sft: 3 steps in a row up to step {reached} had a "
                           rf"non-finite loss, gradient or update \({skipped} skipped in all by "
                           rf"step {stop}\); stopping \(the last checkpoint, step {stop - 1}, is "
                           rf"kept\)"):
    main_lib.run(c, wd)
  assert not os.path.exists(os.path.join(wd, "results.md"))


def _tb_scalars(tb_dir):
  """(tag, step, value) of every scalar in the TensorBoard event files (TFRecord framing read
  by hand; the Event proto from tensorboardX)."""
  from tensorboardX.proto import event_pb2
  out = []
  for name in sorted(os.listdir(tb_dir)):
    with open(os.path.join(tb_dir, name), "rb") as f:
      data = f.read()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in ev.summary.value:
        out.append((v.tag, ev.step, float(v.simple_value)))  # float32
  return sorted(out)


def test_tensorboard_agrees_with_metrics_jsonl_after_a_resume(shared, tmp_path):
  """Killed after step 3 of 5 and resumed from the checkpoint at step 2: step 3 is logged again,
  once, in both metrics.jsonl and TensorBoard."""
  wd = str(tmp_path / "run")
  over = {"train.steps": 5, "train.lr": 5e-3, "log.every": 1, "checkpoint.every": 2,
          "log.tensorboard": True, "eval.at_end": False}
  with pytest.raises(runner.SimulatedKill):
    main_lib.run(tiny_config(shared, "sft", **over, **{"debug.stop_after": 3}), wd)
  main_lib.run(tiny_config(shared, "sft", **over), wd)
  rows = read_metrics(wd, "sft")
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  want = sorted((f"sft/{k}", r["step"], float(np.float32(v))) for r in rows for k, v in r.items()
                if k not in ("stage", "step", "time") and isinstance(v, (int, float))
                and not isinstance(v, bool))
  assert _tb_scalars(os.path.join(wd, "tb")) == want


def _cli(workdir, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "real_jax.main", f"--workdir={workdir}",
                      "--config=configs/synthetic.py:runlocal", *args], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  return r.returncode, r.stderr.strip().splitlines()


def test_cli_errors_are_one_line_with_status_2(tmp_path):
  """A typo or a bad value is one `config error:` line with status 2, not a traceback."""
  rc, lines = _cli(tmp_path / "run", "--config.rl.steps=-3")
  assert rc == 2 and lines[-1] == "config error: config.rl.steps=-3 is negative; use 0 or more"
  rc, lines = _cli(tmp_path / "run", "--config.rl.bta=0.1")
  assert rc == 2 and lines[-1] == ('config error: unknown config field \'bta\' (--config.rl.bta). '
                                   'Did you mean "beta" instead of "bta"? `--help` lists the '
                                   'fields'), lines[-3:]
  assert sum("config error" in l for l in lines) == 1 and not any("Traceback" in l for l in lines)
  assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_missing_model_directory_is_a_config_error(shared, tmp_path):
  c = tiny_config(shared, "sft", **{"model.hf_dir": "/no/such/model"})
  with pytest.raises(ConfigError, match=r"^/no/such/model.*config\.json"):
    main_lib.run(c, str(tmp_path / "a"))
