"""Config files load, overrides work, and bad configs fail before anything is built."""

import os

import pytest
from absl import flags
from ml_collections import config_flags

from real_jax.train import config_lib
from real_jax.train.config_lib import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = os.path.join(ROOT, "configs", "synthetic.py")
PROM = os.path.join(ROOT, "configs", "prometheus.py")


def _load(path, arg=None):
  return config_lib.load_config(f"{path}:{arg}" if arg else path)


@pytest.mark.parametrize("arg", [None, "runlocal", "method=sft", "method=raft", "method=tract",
                                 "method=grpo", "method=real,runlocal", "method=sft,study",
                                 "method=real,study,runlocal"])
def test_synthetic_configs_validate(arg):
  c = _load(SYNTH, arg)
  config_lib.check_fields(c)
  assert config_lib.validate(c, num_devices=1) == {"data": 1, "fsdp": 1, "tensor": 1}
  study = bool(arg) and "study" in arg
  s = c.data.synthetic
  assert (s.difficulty, s.ood_hard, s.ood_rubric_shuffle_response,
          c.warmup.replay_every > 0) == ((1, "carry", True, True) if study else
                                         (0, "level", False, False))


@pytest.mark.parametrize("size", ["0.6b", "1.7b", "4b", "8b", "14b", "32b"])
@pytest.mark.parametrize("method", ["real", "raft"])
def test_prometheus_configs_validate(size, method):
  c = _load(PROM, f"size={size},method={method}")
  devices = 16 if size in ("14b", "32b") else 8
  mesh = config_lib.validate(c, num_devices=devices)
  assert mesh["data"] * mesh["fsdp"] * mesh["tensor"] == devices
  assert c.model.preset == f"qwen3-{size}"
  assert c.rl.group_size == (8 if size == "32b" else 16)
  assert c.optim.lr == 1e-6 and c.optim.b1 == 0.9 and c.optim.weight_decay == 0.01


@pytest.mark.parametrize("method", ["real", "tract"])
def test_prometheus_mistral_config(method):
  """The paper's Mistral-7B recipe: REAL at LR 5e-8 (run_real.sh), n = 16; TRACT-style SFT for
  2 epochs; the Mistral preset (no q/k norm, 32k vocabulary) on FSDP over all chips."""
  c = _load(PROM, f"size=mistral-7b,method={method}")
  assert config_lib.validate(c, num_devices=4) == {"data": 1, "fsdp": 4, "tensor": 1}
  assert c.model.preset == "mistral-7b"
  cfg = config_lib.preset_model(c)
  assert cfg.family == "mistral" and not cfg.qk_norm and cfg.vocab_size == 32000
  if method == "real":
    assert c.optim.lr == 5e-8 and c.rl.group_size == 16 and c.rl.epochs == 3
  else:
    assert c.train.steps == 780 and c.optim.warmup_steps == 78 and c.train.lr == 1e-5


def test_prometheus_bad_size():
  with pytest.raises(ConfigError, match="size"):
    _load(PROM, "size=3b")


def test_parse_arg_types_and_unknown():
  a = config_lib.parse_arg("size=4b,runlocal,beta=0.5,steps=3", size="8b", runlocal=False,
                           beta=0.0, steps=1)
  assert (a.size, a.runlocal, a.beta, a.steps) == ("4b", True, 0.5, 3)
  with pytest.raises(ConfigError, match="unknown config argument 'bogus'"):
    config_lib.parse_arg("bogus=1", size="8b")


def test_unknown_field_in_config_file_is_rejected():
  c = _load(SYNTH)
  c.unlock()
  c.rl.betaa = 0.1  # a typo in a config file
  with pytest.raises(ConfigError, match=r"config\.rl\.betaa.*fields of config\.rl"):
    config_lib.validate(c, num_devices=1)


def test_unknown_override_is_rejected_by_the_flag_parser():
  argv = ["prog", f"--config={SYNTH}", "--config.rl.betaa=1"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv, lock_config=True, sys_argv=argv)
  with pytest.raises(Exception, match="betaa"):
    fv(argv)
    fv.config  # noqa: B018 (parsing is lazy in some versions)
  argv = ["prog", f"--config={SYNTH}:method=grpo", "--config.rl.beta=0.5"]
  fv2 = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv2, lock_config=True, sys_argv=argv)
  fv2(argv)
  assert fv2.config.method == "grpo" and fv2.config.rl.beta == 0.5


@pytest.mark.parametrize("field,value,match", [
    ("method", "ppo", r"config\.method='ppo' is not one of"),
    ("rl.filter", "some", r"config\.rl\.filter"),
    ("rl.shaping", "exp", r"config\.rl\.shaping"),
    ("rl.top_p", 1.5, r"config\.rl\.top_p=1\.5 must be in"),
    ("rl.group_size", 1, r"rl\.group_size=1"),
    ("eval.invalid", "zero", r"config\.eval\.invalid"),
])
def test_bad_values(field, value, match):
  c = _load(SYNTH)
  config_lib.assign(c, field, value)
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c, num_devices=1)


def test_mesh_that_does_not_fit_the_devices():
  c = _load(SYNTH)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 4, 2, 2
  with pytest.raises(ConfigError, match=r"needs 16 devices but 8 are available.*config\.mesh"):
    config_lib.validate(c, num_devices=8)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 1  # a smaller mesh uses the first 4 devices
  assert config_lib.validate(c, num_devices=8) == {"data": 2, "fsdp": 2, "tensor": 1}
  c.mesh.data, c.mesh.fsdp = -1, 3
  with pytest.raises(ConfigError, match="not a multiple of 3"):
    config_lib.validate(c, num_devices=8)


def test_batch_that_does_not_divide_the_mesh():
  c = _load(SYNTH)
  c.mesh.data = -1  # 8 devices -> the batch is split 8 ways
  c.warmup.batch_size = 12
  with pytest.raises(ConfigError, match=r"config\.warmup\.batch_size=12 is not a multiple of 8.*"
                                        r"use e\.g\. 8 or 16"):
    config_lib.validate(c, num_devices=8)
  c.warmup.batch_size = 32
  c.warmup.micro_batch_size = 12
  with pytest.raises(ConfigError, match="micro_batch_size=12 does not divide"):
    config_lib.validate(c, num_devices=8)
  c.warmup.micro_batch_size = 0
  c.rl.mini_batch_size = 24
  with pytest.raises(ConfigError, match=r"rl\.mini_batch_size=24 does not divide the 128 rows"):
    config_lib.validate(c, num_devices=8)


def test_eval_needs_a_model():
  c = _load(SYNTH)
  c.method = "eval"
  c.model.hf_dir = ""
  with pytest.raises(ConfigError, match="method=eval needs"):
    config_lib.validate(c, num_devices=1)


@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_synthetic_base_config_validates(arg):
  c = _load(os.path.join(ROOT, "configs", "synthetic_base.py"), arg)
  assert config_lib.validate(c, num_devices=1) == {"data": 1, "fsdp": 1, "tensor": 1}
  assert config_lib.stages_for(c) == ["pretrain"]
  c.data.name = "prometheus"
  with pytest.raises(ConfigError, match="method=pretrain .* needs data.name=synthetic"):
    config_lib.validate(c, num_devices=1)
  c.data.name = "synthetic"
  c.pretrain.steps = 0
  with pytest.raises(ConfigError, match="pretrain.steps > 0"):
    config_lib.validate(c, num_devices=1)


def test_stages():
  c = _load(SYNTH)
  assert config_lib.stages_for(c) == ["warmup", "rl"]
  c.method = "tract"
  assert config_lib.stages_for(c) == ["warmup", "tract1", "tract_gen", "tract2"]
  c.warmup.steps = 0
  c.method = "raft"
  assert config_lib.stages_for(c) == ["raft"]


def test_exactness_conditions_are_listed():
  """The override list in config_lib.EXACT_OVERRIDES gives a run with no exactness gap; each
  condition broken on its own is reported."""
  c = config_lib.base_config()
  c.rl.buffer_size, c.rl.group_size = 4, 4
  assert len(config_lib.exactness_gaps(c)) == 6  # the authors' defaults: six conditions off
  for item in config_lib.EXACT_OVERRIDES:
    key, value = item.split("=")
    value = {"<rl.lam>": str(c.rl.lam), "<rl.buffer_size x rl.group_size>": "16"}.get(value, value)
    node = c.rl
    field = key.split(".")[1]
    node[field] = type(node[field])(value) if not isinstance(node[field], str) else value
  assert config_lib.exactness_gaps(c) == []
  for field, bad in (("top_p", 0.9), ("filter", "partial"), ("beta", 0.5), ("epochs", 2),
                     ("shaping", "prob"), ("invalid", "drop"), ("advantage", "authors")):
    old = c.rl[field]
    c.rl[field] = bad
    gaps = config_lib.exactness_gaps(c)
    assert len(gaps) == 1, (field, gaps)
    c.rl[field] = old
  c.rl.policy_loss = "ppo"
  assert config_lib.exactness_gaps(c) == []  # one on-policy step: the ratio is 1, still exact
  c.rl.epochs = 3  # several steps are off-policy after the first, with or without the ratio
  gaps = config_lib.exactness_gaps(c)
  assert len(gaps) == 1 and "3 optimiser steps per rollout batch" in gaps[0], gaps
  c.rl.epochs, c.rl.mini_batch_size = 1, 8  # two mini-batches: the second step is off-policy too
  gaps = config_lib.exactness_gaps(c)
  assert len(gaps) == 1 and "2 optimiser steps" in gaps[0], gaps


def test_every_field_has_a_meaning():
  """`--print_config` and `--help` read each field's meaning from base_config's comments."""
  docs = config_lib.field_docs()
  fields = config_lib.flatten(config_lib.base_config())
  assert [f for f in fields if not docs.get(f)] == []
  assert docs["rl.beta"].startswith("weight of the refinement term")
  assert docs["data.overlong"].startswith("Prompts longer than max_prompt_len: skip")  # block above
  assert docs["rl"] == "RL (grpo and real)."  # a group's comment


def _main_cli(*args):
  import subprocess
  import sys
  return subprocess.run([sys.executable, "-m", "real_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_help_lists_the_config_fields_and_exits_0():
  for flag in ("--help", "--helpfull"):
    r = _main_cli(flag)
    assert r.returncode == 0, (flag, r.stderr[-2000:])
    assert "--print_config" in r.stdout and "--workdir" in r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith("rl.beta = "))
    assert line.split("#", 1)[1].strip().startswith("weight of the refinement term"), line
  assert "absl.app:" in r.stdout and "only_check_args" in r.stdout  # --helpfull: every module


def test_print_config_shows_values_defaults_and_meanings():
  r = _main_cli("--config", "configs/prometheus.py:size=8b", "--config.rl.beta=0.25",
                "--print_config")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = {l.split(" = ")[0]: l for l in r.stdout.splitlines() if " = " in l and l[0] != "#"}
  assert set(lines) == set(config_lib.flatten(config_lib.base_config()))
  assert lines["rl.beta"].startswith("rl.beta = 0.25 ") and "default 0.0" in lines["rl.beta"]
  assert "weight of the refinement term" in lines["rl.beta"]
  assert lines["model.preset"].startswith("model.preset = 'qwen3-8b'")
  assert "default" not in lines["rl.lam"]  # unchanged from base_config
  assert "--config.rl.beta=0.25" in r.stdout.splitlines()[0]
  assert not os.path.exists(os.path.join(ROOT, "workdirs", "default"))  # nothing ran
