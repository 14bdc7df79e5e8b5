"""Shared by the tests: a tiny run config for the end-to-end runs (tests/test_main.py,
tests/test_multihost.py, ...) and a tiny random model."""

import os

import jax

from real_jax import models
from real_jax import sharding as shd
from real_jax.train import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(shared, method="real", **over):
  """configs/synthetic.py:runlocal on the 2-layer "tiny" preset, one device, short sequences."""
  c = config_lib.load_config(os.path.join(ROOT, "configs", "synthetic.py") +
                             f":method={method},runlocal")
  c.model.preset = "tiny"
  c.model.hf_dir = ""  # random init, not the committed base (tests/test_pretrain.py covers it)
  c.model.vocab_size = -1
  c.data.data_dir = shared["data_dir"]
  c.data.tokenizer = ""  # built in the workdir, unless the shared one exists
  if os.path.exists(os.path.join(shared["tok_dir"], "tokenizer.json")):
    c.data.tokenizer = shared["tok_dir"]
  c.data.synthetic.train_size = 64
  c.data.synthetic.test_size = 8
  c.data.synthetic.ood_size = 8
  c.data.val_size = 0  # the tests that select checkpoints set it (test_main)
  c.data.eval_splits = "test,test_ood_hard"
  c.warmup.batch_size = c.train.batch_size = 8
  c.rl.prompts_per_step = 2
  c.rl.buffer_size = 2
  c.rl.group_size = 4
  c.rl.mini_batch_size = 8
  c.rl.max_response_len = 56  # a demonstration CoT + delimiter is 49 tokens
  c.eval.batch_size = 8
  c.eval.max_items = 8
  c.eval.max_response_len = 56
  c.eval.before_training = False  # the demo's base row; the tests that want it set it
  c.log.tensorboard = False
  c.unlock()
  for k, v in over.items():
    config_lib.assign(c, k, v)
  c.lock()
  return c


def run_notebook(name: str) -> tuple[list, str]:
  """Executes notebooks/<name> headless in a fresh kernel (environment as the caller set it);
  asserts no cell raised. Returns (all outputs, their text)."""
  import nbclient  # the test extra's notebook runner
  import nbformat
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  errors = [o for o in outputs if o.get("output_type") == "error"]
  assert not errors, errors[0].get("evalue")
  return outputs, "".join(o.get("text", "") for o in outputs)


def png_count(outputs) -> int:
  """Number of PNG figures among notebook outputs."""
  return sum("image/png" in o.get("data", {}) for o in outputs)


def tiny_random_model(seed: int):
  """(graphdef, params, mesh): the 2-layer "tiny" preset, random weights, vocabulary 512 (room
  for the test tokenizers of tests/test_judge.py), on one device."""
  cfg = models.get_preset("tiny").model.replace(vocab_size=512)
  mesh = shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
  graphdef, params = models.init_params(cfg, mesh=mesh, seed=seed)
  return graphdef, params, mesh
