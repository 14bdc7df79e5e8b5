"""The decoder (Qwen3, Llama, Mistral): parity with transformers, KV cache, HF import/export,
sharding, presets."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_fixtures import make_tiny_llama_family, make_tiny_qwen3
from real_jax import models
from real_jax import sharding as shd
from real_jax.models import hf as hf_io
from real_jax.tools import check_hf_parity, memory_table

PARITY_CASES = {
    "tied": dict(),
    "untied_headdim24_theta1e6": dict(tie_word_embeddings=False, head_dim=24, rope_theta=1e6),
    "gqa3_theta500": dict(num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                          hidden_size=48, rope_theta=500.0),
    "mha_3layers": dict(num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=3,
                        rope_theta=1e5),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_logits_match_transformers_fp32(tmp_path, case):
  ckpt = make_tiny_qwen3(str(tmp_path / case), seed=1, **PARITY_CASES[case])
  diff, tol = check_hf_parity.check(ckpt, "float32", batch=4, length=20)
  assert tol == 1e-4
  assert diff <= tol, f"{case}: max_abs_diff={diff}"


def test_logits_match_transformers_bf16(tmp_path):
  # bf16 keeps ~3 significant digits; the stated tolerance is 4e-2 x max(1, max|logit|).
  ckpt = make_tiny_qwen3(str(tmp_path / "bf16"), seed=2, dtype="bfloat16",
                         tie_word_embeddings=False)
  diff, tol = check_hf_parity.check(ckpt, "bfloat16", batch=3, length=16)
  assert diff <= tol, f"bf16 max_abs_diff={diff} > {tol}"
  with open(os.path.join(ckpt, "config.json")) as f:
    assert json.load(f)["dtype"] == "bfloat16"


def test_parity_tool_cli_exit_codes(tmp_path, capsys, monkeypatch):
  ckpt = make_tiny_qwen3(str(tmp_path / "cli"), seed=3)
  assert check_hf_parity.main([ckpt]) == 0
  out = capsys.readouterr().out
  assert "max_abs_diff=" in out and float(out.split("max_abs_diff=")[1].split()[0]) <= 1e-4
  assert out.rstrip().endswith("-> OK")
  # The same checkpoint, with the JAX side alone corrupted (its final norm weight x 1.01 after
  # loading; transformers reads the file untouched): the tool reports FAIL and exits 1.
  real_load = check_hf_parity.load_hf

  def corrupted_load(*args, **kwargs):
    cfg, graphdef, params = real_load(*args, **kwargs)
    model = nnx.merge(graphdef, params)
    model.final_norm[...] = model.final_norm[...] * 1.01
    return (cfg, *nnx.split(model))

  monkeypatch.setattr(check_hf_parity, "load_hf", corrupted_load)
  assert check_hf_parity.main([ckpt]) == 1
  out = capsys.readouterr().out
  assert float(out.split("max_abs_diff=")[1].split()[0]) > 1e-4
  assert out.rstrip().endswith("-> FAIL")


def _random_batch(vocab, b, t, seed=0):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(1, vocab, (b, t)).astype(np.int32)
  mask = np.ones((b, t), bool)
  for i in range(1, b):
    mask[i, : 2 * i] = False
  return jnp.asarray(np.where(mask, tokens, 0)), jnp.asarray(mask)


@pytest.mark.parametrize("scan_layers,share", [(True, True), (False, True), (True, False)])
def test_group_decode_matches_full_forward(scan_layers, share):
  """Prefill G left-padded prompts of different lengths once, then decode n = 2 rows per group
  that feed different tokens: every step's logits equal a full forward over the row's prompt
  and its own tokens (the group-shared prompt cache and the row cache, merged exactly)."""
  cfg = models.get_preset("tiny").model.replace(scan_layers=scan_layers)
  graphdef, params = models.init_params(cfg, seed=0)
  g, n, p, r = 3, 2, 7, 5
  rng = np.random.RandomState(0)
  ptok, pmask = np.zeros((g, p), np.int32), np.zeros((g, p), bool)
  for i, length in enumerate((7, 4, 2)):
    ptok[i, p - length:] = rng.randint(1, cfg.vocab_size, length)
    pmask[i, p - length:] = True
  own = rng.randint(1, cfg.vocab_size, (g * n, r)).astype(np.int32)
  full = models.forward_logits(
      graphdef, params, jnp.asarray(np.concatenate([np.repeat(ptok, n, 0), own], 1)),
      jnp.asarray(np.concatenate([np.repeat(pmask, n, 0), np.ones((g * n, r), bool)], 1)))

  model = nnx.merge(graphdef, params)
  hidden, kv = model(jnp.asarray(ptok), models.positions_from_mask(jnp.asarray(pmask)),
                     jnp.asarray(pmask), return_kv=True)
  assert kv[0].shape == (cfg.num_layers, g, p, cfg.num_kv_heads, cfg.head_dim)
  np.testing.assert_allclose(np.repeat(model.logits(hidden[:, -1]), n, 0), full[:, p - 1],
                             atol=1e-5)
  cache = models.decode_cache(kv, jnp.asarray(pmask), g * n, r + 2, share_prompt=share)
  assert cache.prompt_k[0].shape[0] == (g if share else g * n)
  weights = models.decode_weights(model)
  step = jax.jit(lambda t, pos, c, i: models.decode_step(cfg, weights, t, pos, c, i))
  prompt_len = np.repeat(pmask.sum(1), n)
  for i in range(r):
    logits, cache = step(jnp.asarray(own[:, i]), jnp.asarray(prompt_len + i), cache, i)
    np.testing.assert_allclose(logits, full[:, p + i], atol=1e-5, err_msg=f"decode step {i}")
  assert cache.k[0].shape[2:] == (cfg.head_dim, r + 2)  # keys [B, K, H, R]
  assert np.all(np.asarray(cache.k[0])[..., r:] == 0)  # spare slots untouched
  assert np.all(np.asarray(cache.v[0])[:, :, r:] == 0)


def test_chunked_attention_exact_and_memory_bounded():
  """Query-chunked attention equals one block (values and gradients, left padding) and no
  [B, N, T, T] float32 logits exist in the forward or the gradient's jaxpr."""
  cfg = models.get_preset("tiny").model
  graphdef, params = models.init_params(cfg, seed=2)
  b, t, chunk = 2, 40, 16
  tokens, mask = _random_batch(cfg.vocab_size, b, t, seed=3)
  chunked, _ = models.abstract_model(cfg.replace(attention_chunk=chunk))

  def loss(p, g):
    return jnp.sum(jnp.where(mask[..., None], models.forward_logits(g, p, tokens, mask), 0) ** 2)
  l_ref, g_ref = jax.value_and_grad(loss)(params, graphdef)
  l_chk, g_chk = jax.value_and_grad(loss)(params, chunked)
  np.testing.assert_allclose(l_chk, l_ref, rtol=1e-5)
  for a, c in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_chk)):
    np.testing.assert_allclose(a, c, atol=1e-5, rtol=1e-4)

  def sizes(jaxpr, out):
    from jax.extend.core import jaxprs_in_params
    for eqn in jaxpr.eqns:
      out.extend(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
      for sub in jaxprs_in_params(eqn.params):
        sizes(sub, out)
    return out
  full_logits = b * cfg.num_heads * t * t
  for g, bound_ok in ((chunked, True), (graphdef, False)):
    shapes = sizes(jax.make_jaxpr(jax.grad(loss))(params, g).jaxpr, [])
    largest = max(int(np.prod(s)) for s in shapes if len(s) >= 4 and s[-1] == t)  # any dtype
    assert (largest <= b * cfg.num_heads * chunk * t) == bound_ok, (largest, full_logits)


LLAMA_FAMILY_CASES = {
    "mistral": ("mistral", dict()),
    "mistral_theta1e6_tied_mha": ("mistral", dict(rope_theta=1e6, tie_word_embeddings=True,
                                                  num_key_value_heads=4)),
    "llama": ("llama", dict()),
    "llama_gqa3_headdim24_3layers": ("llama", dict(hidden_size=48, num_attention_heads=6,
                                                   num_key_value_heads=3, head_dim=24,
                                                   num_hidden_layers=3)),
}


@pytest.mark.parametrize("case", sorted(LLAMA_FAMILY_CASES))
def test_llama_family_logits_match_transformers_fp32(tmp_path, case):
  family, kw = LLAMA_FAMILY_CASES[case]
  ckpt = make_tiny_llama_family(str(tmp_path / case), family, seed=2, **kw)
  cfg = hf_io.config_from_hf(hf_io.read_config(ckpt))
  assert cfg.family == family and not cfg.qk_norm
  _, params = models.abstract_model(cfg)
  assert "q_norm" not in params["layers"] and cfg.num_params() == sum(
      int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  diff, tol = check_hf_parity.check(ckpt, "float32", batch=4, length=20)
  assert tol == 1e-4
  assert diff <= tol, f"{case}: max_abs_diff={diff}"


@pytest.mark.parametrize("family", ["mistral", "llama"])
def test_llama_family_export_round_trip(tmp_path, family):
  """Load -> export -> transformers loads the same architecture and gives the same logits;
  reloading gives the same parameters bit for bit."""
  import torch
  from transformers import AutoModelForCausalLM
  ckpt = make_tiny_llama_family(str(tmp_path / "src"), family, seed=3)
  cfg, graphdef, params = hf_io.load_hf(ckpt)
  out = hf_io.export_hf(str(tmp_path / "export"), cfg, params)
  with open(os.path.join(out, "config.json")) as f:
    exported = json.load(f)
  assert exported["model_type"] == family
  assert exported["architectures"] == [f"{family.capitalize()}ForCausalLM"]
  hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  assert type(hf).__name__ == f"{family.capitalize()}ForCausalLM"
  tokens, mask, positions = check_hf_parity.make_batch(cfg.vocab_size, 3, 12, 1)
  ref = check_hf_parity.hf_logits(out, "float32", tokens, mask, positions)
  ours = np.asarray(models.forward_logits(graphdef, params, tokens, mask, positions))
  assert np.abs(ref - ours)[mask].max() <= 1e-4
  cfg2, _, params2 = hf_io.load_hf(out)
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(a, b)


def test_mistral_sliding_window_is_enforced(tmp_path):
  ckpt = make_tiny_llama_family(str(tmp_path / "win"), "mistral", sliding_window=16)
  cfg, graphdef, params = hf_io.load_hf(ckpt)
  assert cfg.sliding_window == 16
  tokens, mask = _random_batch(cfg.vocab_size, 2, 16)
  models.forward_logits(graphdef, params, tokens, mask)  # within the window: plain causal
  tokens, mask = _random_batch(cfg.vocab_size, 2, 17)
  with pytest.raises(ValueError, match="exceeds the model's sliding_window=16"):
    models.forward_logits(graphdef, params, tokens, mask)


def test_scan_unrolled_and_remat_agree():
  cfg = models.get_preset("tiny").model
  graphdef, params = models.init_params(cfg, seed=1)
  tokens, mask = _random_batch(cfg.vocab_size, 2, 9)
  ref = models.forward_logits(graphdef, params, tokens, mask)
  for kw in (dict(scan_layers=False), dict(remat="dots"), dict(remat="full")):
    g2, _ = models.abstract_model(cfg.replace(**kw))
    np.testing.assert_allclose(models.forward_logits(g2, params, tokens, mask), ref, atol=1e-5)

  def loss(p, g):
    return models.forward_logits(g, p, tokens, mask).mean()
  g_ref = jax.grad(loss)(params, graphdef)
  g_remat = jax.grad(loss)(params, models.abstract_model(cfg.replace(remat="full"))[0])
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_export_then_transformers_load_gives_same_logits(tmp_path, tied):
  cfg = models.get_preset("tiny").model.replace(tie_word_embeddings=tied)
  graphdef, params = models.init_params(cfg, seed=4)
  out = hf_io.export_hf(str(tmp_path / "export"), cfg, params)
  tokens, mask, positions = check_hf_parity.make_batch(cfg.vocab_size, 3, 12, 1)
  ref = check_hf_parity.hf_logits(out, "float32", tokens, mask, positions)
  ours = np.asarray(models.forward_logits(graphdef, params, tokens, mask, positions))
  assert np.abs(ref - ours)[mask].max() <= 1e-4


def test_export_sharded_index_and_reload(tmp_path):
  cfg = models.get_preset("tiny").model.replace(tie_word_embeddings=False)
  _, params = models.init_params(cfg, seed=5)
  out = hf_io.export_hf(str(tmp_path / "sharded"), cfg, params, max_shard_bytes=60_000)
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(out) if f.endswith(".safetensors")]) > 1
  cfg2, _, params2 = hf_io.load_hf(out)
  assert cfg2.replace(initializer_range=cfg.initializer_range) == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(a, b)


def test_load_transformers_sharded_checkpoint_in_requested_dtype(tmp_path):
  import torch
  from transformers import Qwen3Config as HFConfig, Qwen3ForCausalLM
  torch.manual_seed(0)
  model = Qwen3ForCausalLM(HFConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=16))
  out = str(tmp_path / "hf_sharded")
  model.save_pretrained(out, max_shard_size="100KB")
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  cfg, _, params = hf_io.load_hf(out, dtype="bfloat16")
  assert cfg.dtype == cfg.param_dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  emb = model.model.embed_tokens.weight.detach().numpy()
  np.testing.assert_allclose(np.asarray(params["embedding"][...], np.float32), emb, rtol=1e-2)


def test_load_errors_name_the_problem(tmp_path):
  from safetensors.numpy import load_file, save_file
  ckpt = make_tiny_qwen3(str(tmp_path / "base"))
  tensors = load_file(os.path.join(ckpt, "model.safetensors"))
  config = open(os.path.join(ckpt, "config.json")).read()

  def variant(name, tensors, config_text=config):
    d = tmp_path / name
    d.mkdir()
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(config_text)
    return str(d)

  extra = dict(tensors, **{"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
  with pytest.raises(ValueError, match="q_proj.bias"):
    hf_io.load_hf(variant("extra", extra))
  missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
  with pytest.raises(ValueError, match=r"missing .*model\.layers\.1\.mlp\.up_proj\.weight"):
    hf_io.load_hf(variant("missing", missing))
  other = json.loads(config)
  other["model_type"] = "qwen2"
  with pytest.raises(ValueError, match="model_type='qwen2'"):
    hf_io.load_hf(variant("qwen2", tensors, json.dumps(other)))
  # A Qwen3 checkpoint relabelled as Llama: its q/k norm tensors have no Llama parameter.
  llama = json.loads(config)
  llama["model_type"] = "llama"
  with pytest.raises(ValueError, match=r"no entry in the llama key map.*q_norm"):
    hf_io.load_hf(variant("llama", tensors, json.dumps(llama)))
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_io.load_hf(str(tmp_path))


def test_sharded_forward_equals_single_device():
  cfg = models.get_preset("tiny").model
  mesh = shd.make_mesh({"fsdp": 2, "tensor": 4})
  graphdef, params = models.init_params(cfg, mesh=mesh, seed=6)
  # Every weight really is split across devices.
  q = params["layers"]["q_proj"][...]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (2, 32, 2, 16)
  tokens, mask = _random_batch(cfg.vocab_size, 4, 10)
  single = jax.tree.map(lambda x: jax.device_put(np.asarray(x), jax.devices()[0]), params)
  ref = models.forward_logits(graphdef, single, tokens, mask)
  batch_sharding = shd.batch_sharding(mesh)
  with shd.activation_sharding(mesh):
    fn = jax.jit(models.forward_logits, static_argnums=0)
    out = fn(graphdef, params, jax.device_put(tokens, batch_sharding),
             jax.device_put(mask, batch_sharding))
  assert out.sharding.spec[0] in (("data", "fsdp"), "fsdp")
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_mesh_and_divisibility_errors():
  with pytest.raises(ValueError, match=r"needs 3 devices but 8 are available"):
    shd.make_mesh({"data": 3})
  with pytest.raises(ValueError, match=r"not a multiple of 3"):
    shd.make_mesh({"data": -1, "tensor": 3})
  with pytest.raises(ValueError, match="unknown mesh axes"):
    shd.make_mesh({"model": 8})
  mesh = shd.make_mesh({"tensor": 8})
  cfg = models.get_preset("tiny").model  # 4 kv heads cannot split over tensor=8
  with pytest.raises(ValueError, match=r"'kv_heads' of size 4 does not divide mesh axis 'tensor' of size 8"):
    models.init_params(cfg, mesh=mesh)


def test_tpu_chip_probe_reads_pci_vendors(tmp_path):
  for i, vendor in enumerate(("0x10de\n", "0x8086\n")):  # an NVIDIA GPU, an Intel bridge
    (tmp_path / f"0000:0{i}:00.0").mkdir()
    (tmp_path / f"0000:0{i}:00.0" / "vendor").write_text(vendor)
  (tmp_path / "0000:09:00.0").mkdir()  # a device without a readable vendor file
  assert not shd.has_tpu_chip(str(tmp_path))
  (tmp_path / "0000:05:00.0").mkdir()
  (tmp_path / "0000:05:00.0" / "vendor").write_text("0x1ae0\n")  # Google: a TPU chip
  assert shd.has_tpu_chip(str(tmp_path))


@pytest.mark.parametrize("tpu_present", [False, True])
def test_cpu_is_selected_only_without_an_accelerator(tpu_present):
  """With libtpu installed (the test extra) and no TPU chip, jax would try the TPU backend and
  libtpu would print a screen of errors: the entry points select the CPU first. With a chip
  (probe faked) nothing is forced."""
  import subprocess
  import sys
  code = ("from real_jax import sharding as shd\n"
          f"shd.has_tpu_chip = lambda *a: {tpu_present}\n"
          "shd.use_cpu_without_accelerator()\n"
          "import jax\n"
          "print('platforms', jax.config.jax_platforms)\n")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip() == ("platforms None" if tpu_present else "platforms cpu")
  # A platform chosen in code (or by JAX_PLATFORMS) is never overridden.
  code = code.replace(f"lambda *a: {tpu_present}", "lambda *a: False").replace(
      "shd.use_cpu_without_accelerator()", "import jax\njax.config.update('jax_platforms', "
      "'cpu,tpu')\nshd.use_cpu_without_accelerator()")
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                     timeout=120)
  assert r.stdout.strip() == "platforms cpu,tpu", r.stderr[-2000:]


def test_presets_match_transformers_param_counts_and_print_memory():
  import torch
  from transformers import AutoConfig, AutoModelForCausalLM
  rows = []
  for name, preset in models.PRESETS.items():
    c = preset.model
    # The preset as the Hugging Face config our export writes, built by transformers itself.
    hf_dict = hf_io.config_to_hf(c)
    hf_cfg = AutoConfig.for_model(**hf_dict)
    assert type(hf_cfg).model_type == c.family
    assert hf_io.config_from_hf(hf_dict, dtype=c.dtype, param_dtype=c.param_dtype).replace(
        remat=c.remat) == c, name
    with torch.device("meta"):
      hf_model = AutoModelForCausalLM.from_config(hf_cfg)
    hf_count = sum(p.numel() for p in hf_model.parameters())
    row = memory_table.preset_memory(name)
    assert row["params"] == hf_count == c.num_params(), name
    rows.append(row)
  # Published sizes (rounded) for the real presets.
  published = {"qwen3-0.6b": 0.6e9, "qwen3-1.7b": 1.7e9, "qwen3-4b": 4.0e9, "qwen3-8b": 8.2e9,
               "qwen3-14b": 14.8e9, "qwen3-32b": 32.8e9, "mistral-7b": 7.24e9}
  for r in rows:
    if r["preset"] in published:
      assert abs(r["params"] / published[r["preset"]] - 1) < 0.05, r
  print("\n" + memory_table.markdown_table(rows))


def test_load_hf_directly_into_mesh(tmp_path):
  ckpt = make_tiny_qwen3(str(tmp_path / "mesh"), seed=7, num_attention_heads=8,
                         num_key_value_heads=4, head_dim=8, tie_word_embeddings=False)
  mesh = shd.make_mesh({"fsdp": 2, "tensor": 4})
  cfg, graphdef, params = hf_io.load_hf(ckpt, mesh=mesh)
  _, _, single = hf_io.load_hf(ckpt)
  lm_head = params["lm_head"][...]
  assert lm_head.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert lm_head.addressable_shards[0].data.shape == (cfg.hidden_size // 2, cfg.vocab_size // 4)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
