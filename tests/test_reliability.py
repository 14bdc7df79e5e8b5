"""A workdir is one run: the lock (a real second process), the run identity checked before any
file is written, checkpoint fail-over (real truncation and deletion), real SIGKILLs at a step and
inside an asynchronous save, and one-line errors for the bad inputs a user tries.

The subprocess tests share one finished runlocal SFT workdir (`reference`, 4 steps, checkpoints
at 2 and 4), copied per test; the rest run in-process."""

import filecmp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from real_jax import judging
from real_jax import main as main_lib
from real_jax.data import batching
from real_jax.judge import prompts
from real_jax.train import checkpoint as ckpt_lib
from real_jax.train import config_lib, data_utils
from real_jax.train import workdir as workdir_lib
from run_helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = {"model.preset": "tiny", "model.hf_dir": "", "model.vocab_size": -1, "data.tokenizer": "",
       "data.synthetic.train_size": 64, "data.synthetic.test_size": 8,
       "data.synthetic.ood_size": 8, "data.val_size": 0, "data.max_prompt_len": 104,
       "train.steps": 4,
       "train.batch_size": 8, "train.lr": 5e-3, "checkpoint.every": 2, "log.every": 1,
       "log.tensorboard": False, "eval.at_end": False}


def _main(workdir, *extra, env_extra=None, timeout=300):
  """`python -m real_jax.main` on configs/synthetic.py:method=sft,runlocal with RUN."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_EXEC_TIME_OPTIMIZATION_EFFORT="-1", **(env_extra or {}))
  cmd = [sys.executable, "-m", "real_jax.main",
         "--config=configs/synthetic.py:method=sft,runlocal", f"--workdir={workdir}",
         *[f"--config.{k}={v}" for k, v in RUN.items()], *extra]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _losses(workdir):
  """{step: loss} of the sft stage in metrics.jsonl (each step once)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f if l.strip()]
  steps = [r["step"] for r in rows if r.get("stage") == "sft"]
  assert len(steps) == len(set(steps)), steps
  return {r["step"]: r["loss"] for r in rows if r.get("stage") == "sft"}


def _snapshot(workdir):
  """{relative path: (size, mtime_ns)} of every file below `workdir`."""
  out = {}
  for base, _, files in os.walk(workdir):
    for name in files:
      p = os.path.join(base, name)
      st = os.stat(p)
      out[os.path.relpath(p, workdir)] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
  return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_env):
  wd = str(tmp_path_factory.mktemp("reference") / "run")
  r = _main(wd, env_extra=cache_env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(_losses(wd)) == [1, 2, 3, 4]
  assert sorted(os.listdir(os.path.join(wd, "ckpt", "sft"))) == ["2", "4"]
  # Prompts over data.max_prompt_len (104 of the 96-110 tokens here) are skipped, and said so on
  # the progress line and in metrics.jsonl.
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    skipped = [json.loads(l).get("rows_skipped") for l in f if '"sft"' in l]
  assert skipped[-1] > 0 and skipped == sorted(skipped), skipped
  assert f"rows_skipped={skipped[-1]:.4g}" in r.stderr
  return wd


def _copy(reference, tmp_path):
  wd = str(tmp_path / "run")
  shutil.copytree(reference, wd)
  return wd


# --- the lock ----------------------------------------------------------------------------------

HOLDER = """
import sys, time
from real_jax.train import workdir as w
lock = w.WorkdirLock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_a_live_workdir_is_refused(reference, tmp_path, cache_env):
  wd = _copy(reference, tmp_path)
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, wd], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline().strip() == "held"
    before = _snapshot(wd)
    r = _main(wd, env_extra=cache_env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith(f"workdir error: workdir {wd} is in use by pid {holder.pid} on "
                                f"host {socket.gethostname()}"), lines[-3:]
    assert "--force_unlock" in lines[-1] and not any("Traceback" in l for l in lines)
    assert _snapshot(wd) == before  # no file of the first run changed
  finally:
    holder.kill()
    holder.wait()


def test_stale_locks_are_taken_over(tmp_path, caplog):
  wd = str(tmp_path / "w")
  os.makedirs(wd)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()  # a pid that no longer runs
  path = os.path.join(wd, workdir_lib.LOCK_NAME)
  now = time.time()
  with open(path, "w") as f:
    json.dump({"host": socket.gethostname(), "pid": dead.pid, "started": now, "heartbeat": now}, f)
  with workdir_lib.WorkdirLock.acquire(wd) as lock:
    assert lock.info["pid"] == os.getpid()
    assert json.load(open(path))["pid"] == os.getpid()
  assert not os.path.exists(path)  # released
  assert any(f"pid {dead.pid} on this host no longer runs" in m for m in caplog.messages)
  # Another host: stale only once its heartbeat is older than STALE_AFTER_S.
  with open(path, "w") as f:
    json.dump({"host": "elsewhere", "pid": 1, "started": now, "heartbeat": now - 5}, f)
  with pytest.raises(workdir_lib.WorkdirBusy, match="in use by pid 1 on host elsewhere"):
    workdir_lib.WorkdirLock.acquire(wd)
  with workdir_lib.WorkdirLock.acquire(wd, force=True):  # --force_unlock
    pass
  with open(path, "w") as f:
    json.dump({"host": "elsewhere", "pid": 1, "started": now,
               "heartbeat": now - workdir_lib.STALE_AFTER_S - 1}, f)
  with workdir_lib.WorkdirLock.acquire(wd):
    pass


# --- run identity ------------------------------------------------------------------------------


def _config(**over):
  c = config_lib.load_config(os.path.join(ROOT, "configs", "synthetic.py") + ":method=sft,runlocal")
  for k, v in {**RUN, "mesh.data": 1, **over}.items():
    config_lib.assign(c, k, v)
  return c


@pytest.mark.parametrize("change", [
    {"method": "grpo"}, {"train.lr": 1e-3}, {"seed": 3}, {"data.synthetic.difficulty": 2},
    {"model.preset": "tiny-1m"}])
def test_a_changed_config_is_refused_before_any_file_changes(reference, tmp_path, change):
  wd = _copy(reference, tmp_path)
  before = _snapshot(wd)
  with pytest.raises(config_lib.ConfigError, match=rf"holds another run \(.*{list(change)[0]}"
                                                   r".*use a new --workdir"):
    main_lib.run(_config(**change), wd)
  assert _snapshot(wd) == before
  assert not os.path.exists(os.path.join(wd, workdir_lib.LOCK_NAME))


def test_budgets_logging_and_caps_may_change_on_resume(reference, tmp_path):
  wd = _copy(reference, tmp_path)
  same = _config(**{"log.every": 7, "eval.max_items": 3, "log.heartbeat": 5.0})
  lock, _ = main_lib.claim_workdir(same, wd)
  lock.release()
  same_ident = workdir_lib.run_identity(same, config_lib.stages_for(same))
  assert workdir_lib.check_identity(wd, same_ident) == "same"
  longer = _config(**{"train.steps": 6})
  ident = workdir_lib.run_identity(longer, config_lib.stages_for(longer))
  assert workdir_lib.check_identity(wd, ident) == "extended"
  shorter = _config(**{"train.steps": 2})
  with pytest.raises(workdir_lib.IdentityMismatch, match=r"may grow on resume, not shrink "
                                                         r"\(train.steps 4 -> 2\)"):
    workdir_lib.check_identity(wd, workdir_lib.run_identity(shorter, ["sft"]))
  assert workdir_lib.check_identity(str(tmp_path / "fresh"), ident) == "new"
  info = json.load(open(os.path.join(wd, "run.json")))
  del info["identity"]  # a workdir written before identities: accepted, recorded on this start
  json.dump(info, open(os.path.join(wd, "run.json"), "w"))
  assert workdir_lib.check_identity(wd, ident) == "recorded"


def test_the_model_is_identified_by_content_not_path(tmp_path):
  d = tmp_path / "base"
  d.mkdir()
  (d / "config.json").write_text('{"hidden_size": 8}')
  (d / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}" + b"\x01" * 64)
  first = workdir_lib.directory_fingerprint(str(d))
  (d / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}" + b"\x07" * 64)
  assert workdir_lib.directory_fingerprint(str(d)) != first  # re-pretrained at the same path
  c = _config(**{"model.hf_dir": str(d)})
  shutil.copytree(d, tmp_path / "moved")
  a = workdir_lib.run_identity(c, ["sft"], model_dir=str(d))
  b = workdir_lib.run_identity(_config(**{"model.hf_dir": str(tmp_path / "moved")}), ["sft"],
                               model_dir=str(tmp_path / "moved"))
  assert a["hash"] == b["hash"]  # the same model moved elsewhere is the same run
  (d / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}" + b"\x01" * 64)
  assert workdir_lib.run_identity(c, ["sft"], model_dir=str(d))["hash"] != a["hash"]


# --- checkpoints: fail-over and real kills ------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_an_unreadable_newest_checkpoint_falls_back(reference, tmp_path, cache_env, damage):
  """Step 4 damaged (a params data file truncated, or its `meta` deleted): the rerun says so in
  one line, moves it aside, resumes from step 2 and ends as the uninterrupted run did."""
  wd = _copy(reference, tmp_path)
  step = os.path.join(wd, "ckpt", "sft", "4")
  if damage == "truncate":  # the array data files (orbax's ocdbt `d/` folder)
    files = sorted(os.path.join(b, n) for b, _, fs in os.walk(os.path.join(step, "params"))
                   for n in fs if os.path.basename(b) == "d")
    assert files
    for path in files:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  else:
    shutil.rmtree(os.path.join(step, "meta"))
  r = _main(wd, env_extra=cache_env)
  assert r.returncode == 0, r.stderr[-3000:]
  warn = [l for l in r.stderr.splitlines() if "is unreadable" in l]
  assert len(warn) == 1 and "step 4" in warn[0] and "trying the previous step" in warn[0], warn
  assert "resuming from step 2" in r.stderr
  assert _losses(wd) == pytest.approx(_losses(reference))
  moved = os.listdir(os.path.join(wd, "ckpt", "sft.unreadable"))
  assert len(moved) == 1 and moved[0].startswith("4-")  # moved aside, not deleted
  assert sorted(os.listdir(os.path.join(wd, "ckpt", "sft"))) == ["2", "4"]


def test_no_readable_checkpoint_is_one_line_and_status_2(reference, tmp_path, cache_env):
  wd = _copy(reference, tmp_path)
  for s in ("2", "4"):
    shutil.rmtree(os.path.join(wd, "ckpt", "sft", s, "meta"))
  r = _main(wd, env_extra=cache_env)
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("checkpoint error: no readable checkpoint in ") and "remove" in last
  assert "Traceback" not in r.stderr
  # The rerun keeps refusing rather than silently restarting the stage.
  assert _main(wd, env_extra=cache_env).returncode == 2


def test_judge_from_workdir_falls_back_too(reference, tmp_path):
  wd = _copy(reference, tmp_path)
  shutil.rmtree(os.path.join(wd, "ckpt", "sft", "4", "params"))
  os.makedirs(os.path.join(wd, "ckpt", "sft", "4", "params"))  # an empty, unreadable item
  judge = judging.Judge.from_workdir(wd)
  assert judge.source.endswith("sft step 2")


@pytest.mark.parametrize("hook", ["kill_at_step", "kill_in_save"])
def test_sigkill_then_rerun_equals_the_uninterrupted_run(reference, tmp_path, cache_env, hook):
  """A real SIGKILL after step 3 (between checkpoints) or while step 2's checkpoint is being
  written; the same command again resumes from the last complete checkpoint."""
  wd = str(tmp_path / "run")
  step = 3 if hook == "kill_at_step" else 2
  r = _main(wd, f"--config.debug.{hook}={step}", env_extra=cache_env)
  assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
  assert os.path.exists(os.path.join(wd, workdir_lib.LOCK_NAME))  # left by the dead process
  if hook == "kill_in_save":  # the kill landed inside the save: step 2 only as orbax's temporary
    names = os.listdir(os.path.join(wd, "ckpt", "sft"))
    assert "2" not in names and any(n.startswith("2.orbax-checkpoint-tmp") for n in names), names
  r = _main(wd, env_extra=cache_env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "taking over the lock" in r.stderr
  # No partly written step was visible to the rerun: nothing was unreadable.
  assert "is unreadable" not in r.stderr
  assert _losses(wd) == pytest.approx(_losses(reference))


# --- bad input, one line each -------------------------------------------------------------------


@pytest.mark.parametrize("field,value,message", [
    ("warmup.lr", -0.003, r"config.warmup.lr=-0.003 must be in \[0.0, inf\)"),
    ("rl.lr", float("nan"), "config.rl.lr=nan is not a finite number"),
    ("rl.temperature", float("nan"), "config.rl.temperature=nan is not a finite number"),
    ("eval.temperature", 0.0, r"config.eval.temperature=0.0 must be in \(0.0, inf\)"),
    ("optim.lr", float("inf"), "config.optim.lr=inf is not a finite number"),
    ("checkpoint.every", 0, r"config.checkpoint.every=0 must be in \[1, inf\)"),
    ("rl.top_p", 1.5, r"config.rl.top_p=1.5 must be in \(0.0, 1.0\]"),
])
def test_numeric_fields_are_range_checked(field, value, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_config(**{field: value}), 1)


def test_prompt_plus_response_must_fit_the_context():
  c = _config(**{"data.max_prompt_len": 100, "eval.max_response_len": 60})
  data_utils.check_context_length(c, 161, [])  # evaluation only
  with pytest.raises(config_lib.ConfigError, match=r"data.max_prompt_len \+ data.max_target_len"):
    data_utils.check_context_length(c, 161, ["sft"])  # + the 64-token SFT target
  with pytest.raises(config_lib.ConfigError, match=r"data.max_prompt_len \+ eval.max_response_len"
                                                   r" \(\+1 for the score\) = 161 tokens exceeds "
                                                   r"the model's context of 160"):
    data_utils.check_context_length(c, 160, [])


def test_an_evaluation_split_without_a_usable_item_is_named(tmp_path):
  from real_jax.data import build_synthetic_tokenizer
  from real_jax.judge import scores
  tok = prompts.load_tokenizer(build_synthetic_tokenizer(str(tmp_path / "tok")))
  st = scores.resolve_score_tokens(tok)
  c = _config(**{"data.max_prompt_len": 40})
  short = {"prompt": "1 + 2", "target": 3.0, "target_int": 3, "id": "a"}
  long = {**short, "prompt": " ".join(["1 + 2"] * 40)}
  data_utils.check_eval_sources(c, {"test": [short, long]}, tok, st)
  with pytest.raises(config_lib.ConfigError, match=r"evaluation split 'test_ood_hard' has no "
                                                   r"usable item of 2 \(prompt_too_long 2\)"):
    data_utils.check_eval_sources(c, {"test": [short], "test_ood_hard": [long, long]}, tok, st)


def test_a_runaway_row_is_rejected_before_tokenising(tmp_path, monkeypatch):
  from real_jax.data import build_synthetic_tokenizer
  tok = prompts.load_tokenizer(build_synthetic_tokenizer(str(tmp_path / "tok")))
  limit = 32
  rows = [{"prompt": "1 + 2", "target": 3.0, "target_int": 3, "id": "ok"},
          {"prompt": "x" * (batching.CHARS_PER_TOKEN * limit + 1), "target": 3.0,
           "target_int": 3, "id": "runaway"}]
  seen = []
  real = prompts.render_chat
  monkeypatch.setattr(prompts, "render_chat",
                      lambda t, text, **kw: seen.append(len(text)) or real(t, text, **kw))
  bc = batching.BatchConfig(batch_size=1, buckets=(limit,), max_prompt_len=limit, shuffle=False,
                            num_epochs=1, drop_remainder=False)
  b = batching.JudgeBatcher(rows, tok, bc, process_index=0, process_count=1)
  assert len(list(b)) == 1
  assert b.stats["prompt_far_too_long"] == 1 and b.skipped_rows() == 1
  assert max(seen) < 100  # the runaway row never reached the tokenizer


def test_a_missing_config_file_and_an_unwritable_workdir_are_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "real_jax.main", "--config=configs/nope.py",
                      f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("config error:") and "nope.py" in r.stderr
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(config_lib.ConfigError, match="cannot write to workdir .*a_file/run"):
    main_lib.claim_workdir(_config(), str(blocker / "run"))


def test_judge_grade_names_the_bad_record():
  judge = judging.Judge.__new__(judging.Judge)  # the check comes before any model work
  with pytest.raises(TypeError, match=r"records\[0\] is a NoneType, not a mapping"):
    judge.grade([None])
  with pytest.raises(TypeError, match=r"records\[1\] is a str, not a mapping"):
    judge.grade([{"prompt": "x"}, "a prompt"])


def test_skipped_steps_are_noted_in_the_results_row():
  import types
  c = _config()
  run = types.SimpleNamespace(config=c, settings=config_lib.resolve(c, (1.0, 2.0, 3.0, 4.0, 5.0)),
                              runner=types.SimpleNamespace(skipped_steps={}))
  assert "SKIPPED" not in main_lib._training_label(run, "the base")
  run.runner.skipped_steps["sft"] = (3, 4)
  assert main_lib._training_label(run, "the base").endswith(
      "; 3 of 4 optimiser steps of stage sft SKIPPED (non-finite loss, gradient or update)")


def test_changed_training_data_on_resume_is_one_config_error():
  from real_jax.train import runner as runner_lib

  class Source:
    def restore(self, state):
      raise ValueError("batcher state has num_records=64 but this batcher has 60")

  stage = runner_lib.Stage.__new__(runner_lib.Stage)
  stage.name, stage.meta = "sft", {"data": {"num_records": 64}}
  with pytest.raises(config_lib.ConfigError, match="stage sft: the training data changed since "
                                                   "this workdir's checkpoint .*num_records=64"):
    stage.restore_data(Source())
