"""End-to-end runs of `real_jax.main` on a tiny model and the synthetic task: a short smoke run
of every method, exact resume after a kill, evaluation of a checkpoint and of an exported
Hugging Face directory, and configs that fail before anything is compiled."""

import json
import os

import jax
import numpy as np
import pytest

from real_jax import main as main_lib
from real_jax.evaluate import check_markdown_table
from real_jax.train import config_lib, runner, tract
from real_jax.train import methods as methods_lib
from real_jax.train import stages as stages_lib
from real_jax.train.supervised import run_supervised
from real_jax.train.config_lib import ConfigError
from real_jax.train.metrics import read_metrics
from run_helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("fast_compiles_module")  # see conftest.py


def test_sft_smoke(warm):
  wd, summary = warm
  rows = read_metrics(wd, "sft")
  assert [r["step"] for r in rows] == [1, 20, 40, 60]
  assert rows[-1]["loss"] < rows[0]["loss"]
  assert summary["avg"]["invalid_frac"] < 0.5  # the format is learned
  md = open(os.path.join(wd, "results.md")).read()
  check_markdown_table(md.split("\n\n")[1])
  assert os.path.exists(os.path.join(wd, "eval", "final.json"))
  assert os.path.exists(os.path.join(wd, "eval", "final_predictions.jsonl"))


@pytest.mark.parametrize("method", ["raft", "real", "grpo"])
def test_method_smoke(shared, warm, tmp_path, method):
  extra = {}
  if method == "grpo":  # also exercise the PPO ratio, the KL to the reference and the entropy
    extra = {"rl.policy_loss": "ppo", "rl.kl_coef": 0.01, "rl.entropy_coef": 0.001}
  if method == "real":  # token-budget micro-batches: rows of at most 2 x the widest shape
    extra = {"rl.token_budget": 2 * (128 + 56 + 1)}
  c = tiny_config(shared, method, **{"init.checkpoint": warm[0], "warmup.steps": 0,
                                     "eval.at_end": method != "grpo", **extra})
  main_lib.run(c, str(tmp_path))
  stage = "rl" if method in ("real", "grpo") else method
  rows = read_metrics(str(tmp_path), stage)
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in rows)
  if stage == "rl":
    for k in ("reward_mean", "adv_abs_mean", "pg_loss", "keep_rate", "truncated_frac",
              "grad_norm", "time_rollout", "time_scoring", "time_update", "y_hat_mean"):
      assert k in rows[0], k
    if method == "real":
      assert "refine_loss" in rows[0] and "mse" in rows[0]
    else:
      assert "kl" in rows[0] and "entropy" in rows[0] and rows[0]["entropy"] > 0
  ck = os.path.join(str(tmp_path), "ckpt", stage)
  assert sorted(int(s) for s in os.listdir(ck) if s.isdigit())[-1] == 2


def test_packed_run_equals_padded_run(shared, warm, tmp_path):
  """data.pack through the trainer's own loop: the same records (2 per row of 384 columns, 2
  micro-batches), the same losses and gradient norms step after step (so the same update)."""
  common = {"init.checkpoint": warm[0], "warmup.steps": 0, "eval.at_end": False,
            "train.micro_batch_size": 4}
  runs = {}
  for pack in (False, True):
    c = tiny_config(shared, "sft", **common, **{"data.pack": pack, "data.pack_length": 384})
    main_lib.run(c, str(tmp_path / str(pack)))
    runs[pack] = read_metrics(str(tmp_path / str(pack)), "sft")
  assert [r["rows"] for r in runs[False]] == [8, 8]
  assert [r["rows"] for r in runs[True]] == [4, 4] and runs[True][0]["fill"] > 0.6
  for padded, packed in zip(runs[False], runs[True]):
    for k in ("loss", "ce", "grad_norm", "tokens"):
      assert packed[k] == pytest.approx(padded[k], rel=1e-4), (padded["step"], k)


def test_token_budget_update_equals_fixed_micro_batch_update(shared, warm, tmp_path):
  """rl.token_budget through run_rl: GRPO with the PPO ratio (the old log-probs cut with the
  rows), a KL term and sequence-level aggregation; the first update's loss terms and gradient
  norm equal those of fixed micro-batches of 4 rows (the same rollouts: same parameters, same
  keys)."""
  common = {"init.checkpoint": warm[0], "warmup.steps": 0, "eval.at_end": False,
            "rl.steps": 1, "rl.policy_loss": "ppo", "rl.kl_coef": 0.01,
            "rl.aggregation": "sequence-sum"}
  runs = {}
  for name, extra in (("fixed", {"rl.micro_batch_size": 4}),
                      ("budget", {"rl.token_budget": 4 * (128 + 56 + 1)})):
    c = tiny_config(shared, "grpo", **common, **extra)
    main_lib.run(c, str(tmp_path / name))
    runs[name] = read_metrics(str(tmp_path / name), "rl")
  fixed, budget = runs["fixed"][0], runs["budget"][0]
  assert fixed["reward_mean"] == budget["reward_mean"]  # the same rollouts
  # On-policy, the loss is a sum of O(1) terms that cancel (centred advantages, ratio 1, KL 0):
  # its float noise is ~1e-5 absolute. The gradient norm is what tells the updates apart.
  for k in ("loss", "pg_loss", "kl"):
    assert budget[k] == pytest.approx(fixed[k], abs=1e-4), k
  assert budget["grad_norm"] == pytest.approx(fixed["grad_norm"], rel=1e-4)
  assert fixed["grad_norm"] > 1e-3


def test_a_method_is_one_table_entry_plus_its_step_function(shared, warm, tmp_path):
  """A new method: one `Method` entry, plus the spec and function of its one new stage. The
  config accepts it, `--help` lists it with its description, validation checks its stage's
  batch against the mesh, and `main.run` trains it (its stage's checkpoints and metrics),
  evaluates it and labels its row from the entry."""
  calls = []
  methods_lib.register_stage_spec(methods_lib.Stage(
      "toy_stage", steps=("train.steps",), batch=("train.batch_size", "train.micro_batch_size"),
      targets=True, loss="sft"))

  @stages_lib.register_stage("toy_stage")
  def toy_stage(run, evaluate, carry, final):
    calls.append(final)
    carry.params = run_supervised(
        run, "toy_stage", carry.params, kind="sft", steps=run.config.train.steps,
        batch_size=run.config.train.batch_size, micro_batch_size=0, lr=run.config.train.lr,
        main=final)

  methods_lib.register_method(methods_lib.Method("toy", "toy method", ("toy_stage",),
                                                 doc="a test's method"))
  try:
    assert "  toy       a test's method" in main_lib._help([]).split("\n")
    c = tiny_config(shared, "sft", **{"init.checkpoint": warm[0], "train.steps": 2})
    c.unlock()
    c.method = "toy"
    assert config_lib.stages_for(c) == ["toy_stage"]
    c.train.batch_size, c.mesh.data = 7, -1  # validation reads the new stage's batch field
    with pytest.raises(ConfigError, match=r"config\.train\.batch_size=7 is not a multiple of 2"):
      config_lib.validate(c, 2)
    c.train.batch_size, c.mesh.data = 8, 1
    c.lock()
    main_lib.run(c, str(tmp_path))
    assert calls == [True]
    assert [r["step"] for r in read_metrics(str(tmp_path), "toy_stage")] == [1, 2]
    ck = os.path.join(str(tmp_path), "ckpt", "toy_stage")
    assert sorted(int(s) for s in os.listdir(ck) if s.isdigit())[-1] == 2
    rows = json.load(open(os.path.join(str(tmp_path), "results.json")))["rows"]
    final = [r for r in rows if r["name"] == "toy method"]
    assert final and "2 steps from" in final[0]["info"]["training"]
  finally:
    methods_lib.METHODS.unregister("toy")
    methods_lib.STAGES.unregister("toy_stage")
    stages_lib.STAGE_FNS.unregister("toy_stage")
  with pytest.raises(ConfigError, match="config.method='toy' is not one of"):
    config_lib.validate(c, 1)


def test_real_with_warmup_and_tract_smoke(shared, warm, tmp_path):
  # REAL with its own warm-up stage (the embedded default's shape) ...
  c = tiny_config(shared, "real", **{"eval.at_end": False})
  main_lib.run(c, str(tmp_path / "real"))
  assert {r["stage"] for r in read_metrics(str(tmp_path / "real"))} >= {"warmup", "rl"}
  assert "warm-up (SFT)" in open(str(tmp_path / "real" / "results.md")).read()
  # ... and TRACT: stage 1, one self-CoT per prompt, stage 2 from the base model.
  # (packed: stage 1's demonstrations and stage 2's self-CoTs pack through the same loop)
  c = tiny_config(shared, "tract", **{"init.checkpoint": warm[0], "rl.max_response_len": 48,
                                      "tract.repetition_penalty": 1.03, "data.pack": True,
                                      "data.pack_length": 384})
  main_lib.run(c, str(tmp_path / "tract"))
  stages = {r["stage"] for r in read_metrics(str(tmp_path / "tract"))}
  assert stages >= {"tract1", "tract_gen", "tract2"}
  assert all(r["rows"] < 8 for stage in ("tract1", "tract2")
             for r in read_metrics(str(tmp_path / "tract"), stage))
  gen = [r for r in read_metrics(str(tmp_path / "tract")) if r["stage"] == "tract_gen"][0]
  assert gen["generated"] == 16 and gen["kept"] > 0
  counts = json.load(open(str(tmp_path / "tract" / tract.TRACT_COUNTS)))
  assert counts["prompts_read"] == 16 and counts["prompts_skipped"] == {}
  assert counts["kept"] + counts["truncated"] + counts["eos_before_delimiter"] == 16
  assert f"{counts['kept']} kept of 16 generated" in tract.tract_gen_counts(str(tmp_path / "tract"))
  assert counts["repetition_penalty"] == 1.03
  row = json.load(open(str(tmp_path / "tract" / "results.json")))["rows"][-1]
  assert f"stage 2 retrained from {warm[0]}" in row["info"]["training"]  # stage 1's start
  assert f"{counts['kept']} kept of 16 generated" in row["info"]["training"]
  assert "stage 2 retrained from" in open(str(tmp_path / "tract" / "results.md")).read()


def test_kill_and_resume_equals_uninterrupted(shared, warm, tmp_path):
  over = {"init.checkpoint": warm[0], "warmup.steps": 0, "eval.at_end": False,
          "rl.steps": 3, "checkpoint.every": 1}
  c = tiny_config(shared, "real", **over)
  main_lib.run(c, str(tmp_path / "a"))
  killed = tiny_config(shared, "real", **over, **{"debug.stop_after": 1})
  with pytest.raises(runner.SimulatedKill):
    main_lib.run(killed, str(tmp_path / "b"))
  assert [r["step"] for r in read_metrics(str(tmp_path / "b"), "rl")] == [1]
  main_lib.run(c, str(tmp_path / "b"))  # the same command again: resumes at update 1
  a = read_metrics(str(tmp_path / "a"), "rl")
  b = read_metrics(str(tmp_path / "b"), "rl")
  assert [r["step"] for r in b] == [1, 2, 3]
  skip = {"time", "time_rollout", "time_scoring", "time_update", "gen_tokens_per_s"}
  for ra, rb in zip(a, b):
    for k in ra:
      if isinstance(ra[k], str):
        assert ra[k] == rb[k], (ra["step"], k)
      elif k not in skip:
        assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-7), (ra["step"], k)
  assert a[1]["loss"] != a[2]["loss"]  # the updates did something


def test_eval_of_checkpoint_and_of_exported_hf_dir(shared, warm, tmp_path):
  from real_jax.tools import export_hf
  c = tiny_config(shared, "eval", **{"init.checkpoint": warm[0], "name": "sft checkpoint"})
  s1 = main_lib.run(c, str(tmp_path / "eval_ckpt"))
  out = str(tmp_path / "hf")
  assert export_hf.main(["--workdir", warm[0], "--out", out]) == 0
  assert os.path.exists(os.path.join(out, "tokenizer.json"))
  c = tiny_config(shared, "eval", **{"model.hf_dir": out, "data.tokenizer": out,
                                     "name": "exported"})
  s2 = main_lib.run(c, str(tmp_path / "eval_hf"))
  for split in s1["splits"]:  # same weights, same evaluation draws -> same numbers
    np.testing.assert_allclose(s1["splits"][split]["rail"]["pearson"],
                               s2["splits"][split]["rail"]["pearson"], atol=1e-4)
  results = json.load(open(str(tmp_path / "eval_hf" / "results.json")))
  assert results["rows"][0]["name"] == "exported"


def test_exported_judge_stops_in_transformers_where_ours_does(shared, warm, tmp_path):
  """Before: no generation_config.json and no eos_token_id, so `generate` ran past <|im_end|>
  ("So the overall score is 4 <|im_end|> . 4 + 4 ="); model.safetensors was written 0600."""
  import stat

  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  from real_jax import sampling
  from real_jax.data import load_split
  from real_jax.judge import prompts as prompts_lib
  from real_jax.models import hf as hf_io
  from real_jax.tools import export_hf
  out = str(tmp_path / "hf")
  assert export_hf.main(["--workdir", warm[0], "--out", out]) == 0
  tok = AutoTokenizer.from_pretrained(out)
  gen = json.load(open(os.path.join(out, "generation_config.json")))
  eos = tok.convert_tokens_to_ids("<|im_end|>")
  assert gen["eos_token_id"] == eos == json.load(open(os.path.join(out, "config.json")))[
      "eos_token_id"]
  assert gen["do_sample"] and gen["top_p"] == 0.9 and gen["max_new_tokens"] == 56  # eval.*
  modes = {n: stat.S_IMODE(os.stat(os.path.join(out, n)).st_mode) for n in os.listdir(out)}
  assert len(set(modes.values())) == 1 and modes["model.safetensors"] & 0o044, modes

  src = load_split("synthetic", "test", data_dir=shared["data_dir"], train_size=64, test_size=8,
                   ood_size=8)
  prompts = [prompts_lib.render_chat(tok, src[i]["prompt"]) for i in range(4)]
  hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  _, graphdef, params = hf_io.load_hf(out)
  cfg = sampling.SamplingConfig(max_new_tokens=64, greedy=True, eos_ids=(eos,),
                                pad_id=tok.pad_token_id)
  ended = 0
  for prompt in prompts:
    ids = np.asarray([prompt], np.int32)
    ours = sampling.sample(graphdef, params, ids, np.ones_like(ids), jax.random.key(0), cfg)
    n = int(np.asarray(ours.lengths)[0])
    mine = np.asarray(ours.tokens)[0, :n].tolist()
    with torch.no_grad():  # generation_config.json's defaults, but greedy
      theirs = hf.generate(torch.tensor(ids, dtype=torch.long), do_sample=False,
                           max_new_tokens=64)[0, ids.shape[1]:].tolist()
    assert theirs == mine, (tok.decode(theirs), tok.decode(mine))
    ended += mine[-1] == eos
  assert ended >= 2, "the fixture's judge should end most answers with <|im_end|>"


def test_bad_configs_fail_before_building_anything(shared, tmp_path, monkeypatch):
  import real_jax.models as models

  def boom(*a, **k):
    raise AssertionError("the model was built before the config was checked")

  monkeypatch.setattr(models, "init_params", boom)
  c = tiny_config(shared, "real", **{"mesh.data": 16})
  with pytest.raises(ConfigError, match=r"config\.mesh .*needs 16 devices but 8"):
    main_lib.run(c, str(tmp_path / "a"))
  c = tiny_config(shared, "real", **{"mesh.data": -1, "warmup.batch_size": 12})  # 8 devices
  with pytest.raises(ConfigError, match=r"warmup\.batch_size=12 is not a multiple of 8"):
    main_lib.run(c, str(tmp_path / "b"))
  # A model whose heads do not divide the tensor axis: caught from the abstract shapes.
  c = tiny_config(shared, "real", **{"model.preset": "tiny-1m", "model.vocab_size": 0,
                                     "mesh.data": 2, "mesh.tensor": 4})
  with pytest.raises(ConfigError, match=r"does not divide over mesh.*config\.mesh"):
    main_lib.run(c, str(tmp_path / "c"))
  assert not os.path.exists(str(tmp_path / "c" / "ckpt"))
  c = tiny_config(shared, "sft", **{"data.pack": True, "data.pack_length": 150})
  with pytest.raises(ConfigError, match=r"data\.pack_length=150 is shorter than the longest "
                                        r"record \(.* = 192\)"):
    main_lib.run(c, str(tmp_path / "d"))
  # TRACT's stage 2 packs prompts with self-CoTs of up to rl.max_response_len tokens.
  c = tiny_config(shared, "tract", **{"data.pack": True, "data.pack_length": 192,
                                      "rl.max_response_len": 100})
  with pytest.raises(ConfigError, match=r"data\.pack_length=192 is shorter than the longest "
                                        r"record \(.*rl\.max_response_len \(TRACT's self-CoTs\) "
                                        r"= 228\)"):
    main_lib.run(c, str(tmp_path / "e"))


def _read_meta(d):
  from real_jax.train import checkpoint as ckpt_lib
  ck = ckpt_lib.Checkpointer(d, async_save=False, items=("params", "meta"))
  try:
    return ck.restore_meta(ck.latest_step())
  finally:
    ck.close()


def test_best_checkpoint_is_selected_on_the_validation_split(shared, warm, tmp_path):
  """Periodic evaluations and the best checkpoint use the validation records carved from the
  training split, never a test split; results.md says which checkpoint each row is."""
  wd = str(tmp_path)
  c = tiny_config(shared, "real", **{"init.checkpoint": warm[0], "warmup.steps": 0,
                                     "data.val_size": 8, "eval.every": 1, "rl.steps": 2})
  main_lib.run(c, wd)
  periodic = json.load(open(os.path.join(wd, "eval", "rl_step000001.json")))
  final_val = json.load(open(os.path.join(wd, "eval", "rl_final_val.json")))
  assert list(periodic["summary"]["splits"]) == ["val"] == list(final_val["summary"]["splits"])
  assert periodic["summary"]["splits"]["val"]["counts"]["scored"] == 8
  meta = _read_meta(os.path.join(wd, "ckpt", "rl_best"))
  assert meta["split"] == "val" and meta["metric"] == "rail/pearson"
  vals = {1: periodic["summary"]["splits"]["val"]["rail"]["pearson"],
          2: final_val["summary"]["splits"]["val"]["rail"]["pearson"]}
  finite = {k: v for k, v in vals.items() if v is not None and np.isfinite(v)}
  assert meta["step"] == max(finite, key=finite.get)
  row = json.load(open(os.path.join(wd, "results.json")))["rows"][-1]
  assert row["info"]["checkpoint"] == "rl stage, last step (2)"
  assert "advantages: authors" in row["info"]["training"]
  md = open(os.path.join(wd, "results.md")).read()
  assert "## Rows" in md and "rl stage, last step (2)" in md and "scored 8 of 8 read" in md
  check_markdown_table(md.split("## Rows")[1].strip().split("\n\n")[0])


def test_validation_records_are_disjoint_from_training():
  from real_jax.train import data_utils
  src = [{"id": i} for i in range(100)]
  train, val = data_utils.split_validation(src, 20)
  ids_t = {train[i]["id"] for i in range(len(train))}
  ids_v = {val[i]["id"] for i in range(len(val))}
  assert len(ids_v) == 20 and len(ids_t) == 80 and not ids_t & ids_v
  assert data_utils.split_validation(src, 0) == (src, None)
  with pytest.raises(ConfigError, match="val_size=60"):
    data_utils.split_validation(src, 60)


def test_overlong_eval_prompts_are_counted_or_left_truncated(shared, warm, tmp_path):
  """No item leaves an evaluation silently: with data.max_prompt_len=100 six of the 8 test
  prompts (and some OOD ones) are too long; "skip" reports them per split in results.json,
  results.md and the log, "truncate" (the authors') scores every item on its last 100 tokens."""
  c = tiny_config(shared, "eval", **{"init.checkpoint": warm[0], "data.max_prompt_len": 100})
  s = main_lib.run(c, str(tmp_path / "skip"))
  test = s["splits"]["test"]
  assert test["counts"] == {"available": 8, "read": 8, "scored": 2, "skipped_total": 6,
                            "skipped": {"prompt_too_long": 6}, "truncated": 0}
  assert test["rail"]["n"] == 2
  hard = s["splits"]["test_ood_hard"]["counts"]
  assert 0 < hard["skipped_total"] < 8 and hard["scored"] + hard["skipped_total"] == 8
  md = open(str(tmp_path / "skip" / "results.md")).read()
  assert "SKIPPED 6 (prompt_too_long 6)" in md
  row = json.load(open(str(tmp_path / "skip" / "results.json")))["rows"][0]
  assert row["info"]["counts"]["test"]["skipped_total"] == 6
  c = tiny_config(shared, "eval", **{"init.checkpoint": warm[0], "data.max_prompt_len": 100,
                                     "data.overlong": "truncate"})
  s = main_lib.run(c, str(tmp_path / "truncate"))
  assert s["splits"]["test"]["counts"]["scored"] == 8
  assert s["splits"]["test"]["counts"]["truncated"] == 6
  assert "left-truncated" in open(str(tmp_path / "truncate" / "results.md")).read()
