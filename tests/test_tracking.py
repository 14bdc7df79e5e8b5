"""Tracking: W&B offline logging (read back from the .wandb record stream), rollouts.jsonl,
TensorBoard text, and notebook 02 showing the rollouts."""

import glob
import json
import os
import struct

import pytest

from real_jax import main as main_lib
from real_jax.train.config_lib import ConfigError
from run_helpers import png_count, run_notebook, tiny_config


def _wandb_records(path):
  """The records of a .wandb file: its leveldb-log framing (a 7-byte header, 32 KiB blocks,
  records of 7-byte headers: crc32, length, type FULL/FIRST/MIDDLE/LAST) parsed by hand into
  `wandb_internal_pb2.Record`s (wandb 0.31 ships no reader)."""
  from wandb.proto import wandb_internal_pb2
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", data[:7]
  pos, block, out, pending = 7, 32768, [], b""
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a header is padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
    if kind == 1:
      out.append(chunk)
    elif kind == 2:
      pending = chunk
    elif kind == 3:
      pending += chunk
    elif kind == 4:
      out.append(pending + chunk)
  return [wandb_internal_pb2.Record.FromString(c) for c in out]


def _history(records):
  """Every history row as {key: value} (nested keys joined by "/")."""
  rows = []
  for r in records:
    if r.WhichOneof("record_type") == "history":
      rows.append({"/".join(i.nested_key) if i.nested_key else i.key: json.loads(i.value_json)
                   for i in r.history.item})
  return rows


def tb_rollout_texts(wd):
  """(tag, step, markdown) of the rollout text summaries in <wd>/tb (TFRecord framing read by
  hand; the Event proto from tensorboardX)."""
  from tensorboardX.proto import event_pb2
  texts = []
  for name in os.listdir(os.path.join(wd, "tb")):
    data, i = open(os.path.join(wd, "tb", name), "rb").read(), 0
    while i < len(data):
      (size,) = struct.unpack("<Q", data[i:i + 8])
      ev = event_pb2.Event.FromString(data[i + 12:i + 12 + size])
      i += 12 + size + 4
      texts += [(v.tag, ev.step, v.tensor.string_val[0].decode()) for v in ev.summary.value
                if v.tag.startswith("rl/rollouts")]
  return texts


def check_tracking(wd, metrics, monkeypatch, *, group_size: int, max_cot: int):
  """What an RL run with `rl.log_samples_every=1` (2 groups), TensorBoard, W&B offline and a
  final evaluation wrote (tests/test_lora.py runs it): rollouts.jsonl, TensorBoard text, the
  .wandb record stream (scalars = metrics.jsonl's, the rollout and results tables, the config)
  and notebook 02's view of the rollouts."""
  steps = [r["step"] for r in metrics]
  n = 2 * group_size
  for r in metrics:
    assert r["response_len_max"] >= r["response_len_mean"] > 0

  # rollouts.jsonl: 2 groups x 4 CoTs per logged update, readable and consistent.
  samples = [json.loads(l) for l in open(os.path.join(wd, "rollouts.jsonl"))]
  assert [s["step"] for s in samples] == [u for u in steps for _ in range(n)]
  for s in samples:
    assert s["stage"] == "rl" and s["status"] in ("delimiter", "eos", "truncated")
    assert (s["prompt"] != "") == (s["sample"] == 0) and s["cot"]
    if s["sampled_score"] is not None:
      assert s["binary_reward"] == float(s["sampled_score"] == round(s["target"]))
    assert s["cot_tokens"] <= max_cot
    if s["status"] == "delimiter":  # REAL's regression reward of a CoT that reached the score
      assert s["reward"] == pytest.approx(-(s["y_hat"] - s["target"]) ** 2, rel=1e-5, abs=1e-6)
  assert any(s["advantage"] != 0 for s in samples)

  # TensorBoard: the rollout table as text.
  texts = tb_rollout_texts(wd)
  assert sorted(t[1] for t in texts) == steps
  assert samples[0]["cot"][:40].replace("|", "\\|") in [t for t in texts if t[1] == 1][0][2]

  # W&B offline: the run directory, its .wandb record stream with the scalars, the tables and
  # the config.
  runs = glob.glob(os.path.join(wd, "wandb", "offline-run-*"))
  assert len(runs) == 1
  records = _wandb_records(glob.glob(os.path.join(runs[0], "run-*.wandb"))[0])
  history = _history(records)
  logged = {h["rl/step"]: h for h in history if "rl/reward_mean" in h}
  assert sorted(logged) == steps
  for r in metrics:
    for k in ("reward_mean", "loss", "response_len_max", "entropy"):
      assert logged[r["step"]][f"rl/{k}"] == pytest.approx(r[k], rel=1e-6), k
  tables = {k.rsplit("/", 1)[0]: v for h in history for k, v in h.items()
            if k.endswith("/_type") and v == "table-file"}
  assert set(tables) >= {"rl/rollouts", "results"}
  table_files = glob.glob(os.path.join(runs[0], "files", "media", "table", "**", "*.json"),
                          recursive=True)
  contents = [json.load(open(f)) for f in table_files]
  rollout_tables = [t for t in contents if "cot" in t["columns"]]
  assert len(rollout_tables) == len(steps) and all(len(t["data"]) == n for t in rollout_tables)
  col = rollout_tables[0]["columns"].index("cot")
  assert {row[col] for t in rollout_tables for row in t["data"]} == {s["cot"] for s in samples}
  results = [t for t in contents if t["columns"] == list(main_lib.RESULT_COLUMNS)][0]
  assert {(row[0], row[1], row[2]) for row in results["data"]} == {
      (r[0], r[1], r[2]) for r in main_lib.results_table(wd)}
  config = [i for r in records if r.WhichOneof("record_type") == "run"
            for i in r.run.config.update if i.key == "config"]  # the run record holds it
  assert config and json.loads(config[0].value_json)["method"] == "real"
  assert json.loads(config[0].value_json)["log"]["wandb"]["mode"] == "offline"

  # Notebook 02 shows the rollouts and the CoT lengths.
  monkeypatch.setenv("REAL_JAX_WORKDIR", wd)
  monkeypatch.setenv("XLA_FLAGS", "")
  outputs, text = run_notebook("02_inspect_run.ipynb")
  assert f"rollouts.jsonl: {len(samples)} CoTs at updates {steps}" in text
  # ... and the rest of the notebook: curves, calibration, the rows table, the judge again.
  assert "warmup: loss" in text and "expected calibration error" in text and "y_hat=" in text
  assert "| Model | Checkpoint | Training |" in text
  assert [s for s in samples if s["step"] == steps[-1]][0]["cot"][:60] in text
  assert png_count(outputs) >= 4


def test_wandb_mode_is_checked(shared):
  c = tiny_config(shared, "sft", **{"log.wandb.mode": "cloud"})
  with pytest.raises(ConfigError, match="config.log.wandb.mode='cloud' is not one of"):
    main_lib.config_lib.validate(c, 1)
