"""The synthetic base model: its corpus, its pretraining run, and the committed checkpoint."""
import json
import os
import re

import jax
import numpy as np
import pytest

from real_jax import main as main_lib
from real_jax import sharding as shd
from real_jax.data import synthetic, synthetic_corpus
from real_jax.train import config_lib
from real_jax.judge import prompts
from real_jax.models import hf
from real_jax.train import data_utils, pretrain, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "assets", "synthetic_base")


def _config(name: str, arg: str = ""):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  return config_lib.load_config(f"{path}:{arg}" if arg else path)


def _task(config) -> synthetic.SyntheticConfig:
  return synthetic.SyntheticConfig(**{k: config.data.synthetic[k]
                                      for k in data_utils.SYNTHETIC_OPTIONS})


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return prompts.load_tokenizer(synthetic.build_synthetic_tokenizer(tmp_path_factory.mktemp("tok")))


def test_corpus_covers_every_split_and_holds_no_demonstration(tok):
  task = _task(_config("synthetic_base"))
  assert synthetic_corpus.corpus_levels(task) == (0, 1)  # in-domain and OOD-hard levels
  rng = np.random.default_rng(0)
  docs = [synthetic_corpus.document(rng, task) for _ in range(1500)]
  text = " ".join(docs)
  facts = set(re.findall(r"(?<![\d+])(\d+)\+(\d+)=(\d+)\.", text))
  assert all(int(a) + int(b) == int(s) for a, b, s in facts)
  # Every addition fact of the OOD-hard range (operands 0..9) is in it, so those of the
  # in-domain range (0..4) are too.
  assert {(int(a), int(b)) for a, b, _ in facts} == {(a, b) for a in range(10) for b in range(10)}
  comps = re.findall(r"(\d+) vs (\d+) (right|close|wrong)\.", text)
  for a, b, v in comps:
    d = abs(int(a) - int(b))
    assert v == ("right" if d == 0 else "close" if d == 1 else "wrong")
  assert {int(a) for a, _, _ in comps} == set(range(19))  # every sum of every split
  # Every word of every wording, the held-out ones included.
  ids = tok(docs, add_special_tokens=False)["input_ids"]
  words = {w for row in ids for w in tok.convert_ids_to_tokens(row)}
  for w in synthetic.IN_DOMAIN_WORDINGS + synthetic.OOD_WORDINGS:
    for sentence in (w.instruction, w.reference, w.criteria, *w.descriptions):
      assert set(tok.convert_ids_to_tokens(tok(sentence, add_special_tokens=False)["input_ids"])) <= words
  # Worked solutions: every item of the instruction found by its label, in order, and added
  # right, at both levels; after a full prompt the response's answers are read back.
  sols = [d for d in docs if "Solution:" in d]
  assert len(sols) > 100
  orders = set()
  for d in sols:
    head, tail = d.split(" Solution: ")
    items = re.findall(r"\b([a-d])\) (\d+\+\d+)", head.split("###Response")[0])
    solved = re.findall(r"\b([a-d])\) (\d+\+\d+)=(\d+)", tail)
    assert [(l, e) for l, e, _ in solved] == sorted(items)  # in label order, found by label
    assert [l for l, _, _ in solved] == list("abcd")
    assert all(sum(map(int, e.split("+"))) == int(v) for _, e, v in solved)
    orders.add(tuple(l for l, _ in items))
    if "###Response to evaluate:" in head:
      answers = head.split("###Response to evaluate:\n")[1].split("\n")[0]
      given = sorted(re.findall(r"\b([a-d])\) (\d+)", answers))
      assert tail.endswith("The response gives " + " ".join(f"{l}) {v}" for l, v in given) + ".")
  assert {max(map(int, re.findall(r"\d+", d.split(" Solution: ")[1].split("=")[0]))) > 4
          for d in sols} == {True, False}  # in-domain and OOD-hard operand ranges
  assert tuple("abcd") in orders and len(orders) > 10  # listed in label order and shuffled
  # No judge demonstration: no feedback, no conclusion, nothing after a prompt's last section,
  # no comparison of an answer with a sum inside a prompt or a solution.
  assert not re.search(r"score is \d", text) and "###Feedback:" not in text
  assert not any(" vs " in d for d in docs if "###" in d or "Solution:" in d)
  assert "overall score is (an integer" in text  # the template's instructions are in it
  assert not any(tok.unk_token_id in row for row in ids)


def test_packed_rows_are_a_deterministic_stream(tok):
  task = _task(_config("synthetic_base"))
  kw = dict(seed=3, rows=4, length=64, eos_id=tok.eos_token_id)
  a = synthetic_corpus.packed_rows(tok, task, step=5, **kw)
  assert a.shape == (4, 64) and a.dtype == np.int32
  np.testing.assert_array_equal(a, synthetic_corpus.packed_rows(tok, task, step=5, **kw))
  assert not np.array_equal(a, synthetic_corpus.packed_rows(tok, task, step=6, **kw))
  assert (a == tok.eos_token_id).any()  # documents are separated by EOS


def test_pretraining_run_reproduces_the_committed_metrics(tmp_path):
  """The command in configs/synthetic_base.py, stopped after 25 steps, logs the committed run's
  losses (same schedule, data stream and initialisation)."""
  c = _config("synthetic_base")
  c.unlock()
  c.debug.stop_after = 25
  c.log.tensorboard = False
  c.data.data_dir = str(tmp_path / "tfds")
  c.lock()
  with pytest.raises(runner.SimulatedKill):
    main_lib.run(c, str(tmp_path / "pre"))
  with open(tmp_path / "pre" / "metrics.jsonl") as f:
    got = {r["step"]: r for r in map(json.loads, f) if r["stage"] == "pretrain"}
  with open(os.path.join(BASE, "pretrain_metrics.jsonl")) as f:
    want = {r["step"]: r for r in map(json.loads, f)}
  assert sorted(got) == [1, 25]
  for step in got:
    assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=2e-3), step
  assert want[max(want)]["loss"] < 0.25 * want[25]["loss"]  # the full run kept learning


def test_committed_base_matches_its_record():
  """The committed base loads, its tokenizer is the synthetic one, and its knowledge probes
  give exactly the accuracies its pretraining run recorded."""
  with open(os.path.join(BASE, synthetic_corpus.PROBES_FILE)) as f:
    record = json.load(f)
  tok = prompts.load_tokenizer(BASE)
  mesh = shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
  cfg, graphdef, params = hf.load_hf(BASE, mesh=mesh)
  assert 5e5 < cfg.num_params() < 5e6
  task = _task(_config("synthetic_base"))
  acc = pretrain.probe_accuracy(graphdef, params, synthetic_corpus.probes(task, n=record["n_per_kind"]),
                             tokenizer=tok, pad_id=tok.pad_token_id, mesh=mesh)
  assert acc == pytest.approx(record["accuracy"], abs=1e-9)
  assert min(acc.values()) > 0.9  # it knows the facts and comparisons of every split
  with open(os.path.join(BASE, "tokenizer.json")) as f:
    committed_vocab = json.load(f)["model"]["vocab"]
  assert committed_vocab == {w: i for i, w in enumerate(synthetic.synthetic_vocab())}


def test_demo_config_starts_from_the_base_of_its_task():
  demo, base = _config("synthetic"), _config("synthetic_base")
  assert demo.model.hf_dir == demo.data.tokenizer == BASE
  assert os.path.exists(os.path.join(BASE, "model.safetensors"))
  assert _task(demo).difficulty == _task(base).difficulty
  assert demo.data.synthetic.near_miss_credit == base.data.synthetic.near_miss_credit > 0


def test_replay_interleaves_the_corpus_and_resumes():
  """warmup.replay_every: every k-th batch is the corpus's; the state resumes both streams."""
  class Counter:
    def __init__(self, tag):
      self.tag, self.i = tag, 0

    def __next__(self):
      self.i += 1
      return (self.tag, self.i)

    def state(self):
      return {"i": self.i}

    def restore(self, s):
      self.i = s["i"]

    def skipped_rows(self):
      return 0

  r = pretrain.ReplayBatches(Counter("judge"), Counter("corpus"), 3)
  got = [next(r) for _ in range(5)]
  assert got == [("judge", 1), ("judge", 2), ("corpus", 1), ("judge", 3), ("judge", 4)]
  s = r.state()
  again = pretrain.ReplayBatches(Counter("judge"), Counter("corpus"), 3)
  again.restore(s)
  assert [next(again) for _ in range(3)] == [next(r) for _ in range(3)] == [
      ("corpus", 2), ("judge", 5), ("judge", 6)]


def test_sft_with_replay_trains_on_corpus_batches(tmp_path):
  """warmup.replay_every=2 in the trainer's own path: step 2 is a corpus batch (its rows)."""
  c = _config("synthetic", "method=sft,runlocal")
  c.unlock()
  c.warmup.replay_every = 2
  c.pretrain.batch_size, c.pretrain.seq_len = 4, 64
  c.eval.at_end = c.eval.after_warmup = c.eval.before_training = False
  c.log.tensorboard = False
  c.lock()
  wd = str(tmp_path / "r")
  main_lib.run(c, wd)
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  sft = {r["step"]: r for r in rows if r.get("stage") == "sft" and "rows" in r}
  assert sft[1]["rows"] == c.train.batch_size and sft[2]["rows"] == 4
