"""The Judge API: load a run or a Hugging Face export, grade records, and agree with evaluation."""

import json
import os
import re

import numpy as np
import pytest

import real_jax
from real_jax import main as main_lib
from real_jax.train import data_utils
from run_helpers import ROOT, png_count, run_notebook, tiny_config

pytestmark = pytest.mark.usefixtures("fast_compiles_module")


def _records(shared, n=8):
  c = tiny_config(shared, "eval")
  _, evals, _ = data_utils.load_sources(c, shared["data_dir"], train=False, evaluation=True)
  src = evals["test"]
  return [src[i] for i in range(min(n, len(src)))]


def test_judge_grades_like_evaluation(shared, warm, tmp_path):
  """Greedy grades of the test split equal method=eval's greedy per-item y_hat (one judging
  path); the outputs are consistent (y_hat = sum v p, mass = sum p); same seed, same grades."""
  records = _records(shared)
  judge = real_jax.Judge.from_workdir(warm[0])
  assert judge.score_tokens.values == (1.0, 2.0, 3.0, 4.0, 5.0)
  grades = judge.grade(records, greedy=True, max_new_tokens=56, batch_size=4)
  c = tiny_config(shared, "eval", **{"init.checkpoint": warm[0], "eval.greedy": True,
                                     "data.eval_splits": "test"})
  main_lib.run(c, str(tmp_path))
  preds = [json.loads(l) for l in open(tmp_path / "eval" / "eval_predictions.jsonl")]
  by_index = {p["index"]: p for p in preds}
  for rec, g in zip(records, grades):
    p = by_index[records.index(rec)]
    np.testing.assert_allclose(g.y_hat, p["y_hat"], rtol=1e-5, atol=1e-6)
    assert g.cot == p["cot"]
    assert (g.status == "delimiter") == bool(p["valid"])
  for g in grades:
    np.testing.assert_allclose(g.y_hat, sum(v * q for v, q in g.score_probs.items()), rtol=1e-5)
    np.testing.assert_allclose(g.score_mass, sum(g.score_probs.values()), rtol=1e-5)
    assert 0.0 <= g.score_mass <= 1.0 + 1e-6
  sampled = judge.grade(records[:4], seed=3, max_new_tokens=48)
  again = judge.grade(records[:4], seed=3, max_new_tokens=48)
  assert [g.cot for g in sampled] == [g.cot for g in again]


def test_judge_from_hf_export_equals_from_workdir(shared, warm, tmp_path):
  from real_jax.tools import export_hf
  out = str(tmp_path / "hf")
  assert export_hf.main(["--workdir", warm[0], "--out", out]) == 0
  records = _records(shared, 4)
  a = real_jax.Judge.from_workdir(warm[0]).grade(records, greedy=True, max_new_tokens=48)
  b = real_jax.Judge.from_hf(out).grade(records, greedy=True, max_new_tokens=48)
  for x, y in zip(a, b):
    assert x.cot == y.cot
    np.testing.assert_allclose(x.y_hat, y.y_hat, rtol=1e-4, atol=1e-5)


def test_judge_builds_the_prompt_from_fields(shared, warm):
  judge = real_jax.Judge.from_workdir(warm[0])
  fields = {"instruction": "What is 2+2?", "response": "4", "reference_answer": "4",
            "rubric": "[Correct?]\nScore 1: a\nScore 2: b\nScore 3: c\nScore 4: d\nScore 5: e"}
  text = judge.prompt_text(fields)
  assert "###The instruction to evaluate:\nWhat is 2+2?" in text
  assert text.rstrip().endswith("###Feedback:")
  assert "So the overall score is" in text  # the training template's format line
  with pytest.raises(ValueError, match="max_prompt_len"):
    real_jax.Judge(judge.graphdef, judge.params, judge.tokenizer, max_prompt_len=8).grade([fields])


def test_readme_judge_example_runs(warm, monkeypatch, capsys):
  text = open(os.path.join(ROOT, "README.md")).read()
  body = re.search(r"<!-- SECTION:judge -->(.*?)<!-- /SECTION:judge -->", text, re.S).group(1)
  block = re.findall(r"```python\n(.*?)```", body, re.S)[0]
  monkeypatch.setenv("REAL_JAX_WORKDIR", warm[0])
  exec(compile(block, "README.md:judge", "exec"), {"__name__": "readme_judge"})
  out = capsys.readouterr().out
  assert "| y_hat" in out and "mass on the scores" in out


def test_score_a_dataset_notebook_runs_headless(warm, monkeypatch):
  monkeypatch.setenv("REAL_JAX_WORKDIR", warm[0])
  monkeypatch.setenv("REAL_JAX_NOTEBOOK_ITEMS", "8")
  monkeypatch.setenv("XLA_FLAGS", "")
  outputs, text = run_notebook("03_score_a_dataset.ipynb")
  assert "8 items | RAIL Pearson" in text and "score distribution 1:" in text
  assert png_count(outputs)
