r"""The synthetic task's base model: the analogue of a pretrained LLM, shared by every method.

Command (reproduces the committed assets/synthetic_base/):

  python -m real_jax.main --config configs/synthetic_base.py --workdir workdirs/synthetic_base
  python -m real_jax.tools.export_hf --workdir workdirs/synthetic_base --out assets/synthetic_base

Pretrains the ~0.85M-parameter Qwen3-style "tiny-1m" (4 layers, hidden 128, vocabulary 512 ⊇ the
synthetic word-level tokenizer) by next-token cross-entropy on `real_jax.data.synthetic_corpus`:
addition facts over the operand range of every split (in-domain difficulty 0 and the OOD-hard
difficulty 1), number comparisons, the sentences of every rubric wording (held-out ones too),
full judge prompts without any feedback or score, and worked solutions that find each item by
its label. No judge demonstration is in it.

Hardware: 2 CPU cores, 1 device. Expected: see assets/synthetic_base/README.md (wall time, final
loss and the knowledge probes: greedy next-word accuracy on held-out facts, comparisons and
worked solutions).
The export writes config.json, model.safetensors, the tokenizer and pretrain_probes.json; the
demo (configs/synthetic.py) and experiments/synthetic_table start from that directory.
"""

from real_jax.train import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runlocal=False)
  c = config_lib.base_config()
  c.method = "pretrain"
  c.seed = 0
  c.model.preset = "tiny-1m"
  c.model.scan_layers = False
  c.mesh.data = 1
  c.data.name = "synthetic"
  # The task whose splits the corpus covers: must match configs/synthetic.py.
  c.data.synthetic.difficulty = 0
  c.data.synthetic.near_miss_credit = 0.5
  c.data.synthetic.shuffle_items = True

  c.pretrain.steps = 1500
  c.pretrain.batch_size = 16
  c.pretrain.seq_len = 256  # a full prompt and its worked solution fit in one row
  c.pretrain.lr = 3e-3
  c.pretrain.lr_warmup = 50
  c.pretrain.schedule = "cosine"
  c.optim.weight_decay = 0.01
  c.checkpoint.every = 250
  c.log.every = 25
  c.eval.at_end = False
  if a.runlocal:
    c.pretrain.steps = 4
    c.pretrain.probes = 16
    c.log.every = 1
  return c
