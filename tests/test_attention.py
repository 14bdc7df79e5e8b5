"""The attention backends (real_jax.models.attention) against the chunked reference.

`xla` runs here as on a GPU; `splash` runs in Pallas interpret mode (the TPU kernel's own code,
interpreted on CPU: lengths are padded to multiples of 128); `cudnn` needs an NVIDIA GPU and is
checked by `benchmarks/gpu_suite.sh`. Compared on the real query rows (a padding row's output
is whatever the backend makes of an empty row; no loss reads it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from real_jax import models
from real_jax import sampling as S
from real_jax import sharding as shd
from real_jax.models import attention as A
from real_jax.train import config_lib
from real_jax.train.config_schema import ConfigError

pytestmark = pytest.mark.usefixtures("fast_compiles_module")

# (rows, length, query heads, kv heads, head dim, layout)
CASES = {
    "left_padded_gqa": (3, 40, 4, 2, 16, "left"),
    "packed_gqa": (2, 40, 6, 2, 8, "packed"),
    "left_padded_mha": (2, 24, 4, 4, 16, "left"),
}
# Forward: float32 within 2e-6 (measured <= 5e-7); bfloat16 (the packed case) within 2e-2
# of each other (values O(1); both round probabilities to bf16). Gradients: float32 within 2e-5.
TOL = {"float32": 2e-6, "bfloat16": 2e-2}


def _layout(b, t, kind, rng):
  """(kv_mask [b, t] bool, segment_ids [b, t] int or None): left padding of varied widths, or
  packed rows (segments 1, 2, 3 of varied lengths, then padding 0)."""
  if kind == "left":
    mask = np.ones((b, t), bool)
    for i in range(b):
      mask[i, :(7 * i) % (t // 2)] = False
    return mask, None
  seg = np.zeros((b, t), np.int32)
  for i in range(b):
    cuts = np.sort(rng.choice(np.arange(3, t - 4), 3, replace=False))
    seg[i, :cuts[0]], seg[i, cuts[0]:cuts[1]], seg[i, cuts[1]:cuts[2]] = 1, 2, 3
  return seg > 0, seg


def _inputs(case, dtype="float32", seed=0):
  b, t, n, k, h, kind = CASES[case] if isinstance(case, str) else case
  rng = np.random.default_rng(seed)
  q, kk, v = (jnp.asarray(rng.normal(size=(b, t, m, h)), dtype) for m in (n, k, k))
  mask, seg = _layout(b, t, kind, rng)
  cot = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32) * mask[:, :, None, None]
  return q, kk, v, jnp.asarray(mask), (None if seg is None else jnp.asarray(seg)), cot


def _run(backend, q, k, v, mask, seg, cot, chunk=16):
  """(output, grads of sum(output * cot) w.r.t. q, k, v): cot is 0 on padding rows."""
  def f(q, k, v):
    return A.attention(q, k, v, mask, backend=backend, chunk=chunk, segment_ids=seg)
  out, vjp = jax.vjp(f, q, k, v)
  return out, vjp(cot.astype(out.dtype))


def _assert_close(got, ref, mask, atol, what):
  g, r = (np.asarray(x, np.float32) for x in (got, ref))
  err = np.abs(g - r)[np.asarray(mask)].max()
  assert err <= atol, f"{what}: max |diff| {err:.3g} > {atol}"


@pytest.mark.parametrize("case,dtype", [(c, "float32") for c in sorted(CASES)]
                         + [("packed_gqa", "bfloat16")])
def test_xla_equals_chunked(case, dtype):
  """`xla` (jax.nn.dot_product_attention with an explicit mask) equals `chunked` forward and
  backward: left padding, packed rows with trailing padding, grouped-query and plain heads;
  chunked runs several query blocks (chunk 16 < length)."""
  q, k, v, mask, seg, cot = _inputs(case, dtype)
  out_c, g_c = _run("chunked", q, k, v, mask, seg, cot)
  out_x, g_x = _run("xla", q, k, v, mask, seg, cot)
  assert out_x.dtype == out_c.dtype == jnp.dtype(dtype)
  _assert_close(out_x, out_c, mask, TOL[dtype], "output")
  if dtype == "float32":
    for name, a, b in zip("qkv", g_x, g_c):
      assert np.abs(np.asarray(b)).max() > 1e-2
      np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"d{name}")


# Splash: lengths >= 128 (block_kv_compute is a multiple of 128); 200 is padded to 256.
SPLASH_CASES = {"left_padded_gqa_128": (2, 128, 4, 2, 16, "left"),
                "packed_gqa_200": (2, 200, 4, 2, 16, "packed")}


@pytest.mark.parametrize("case", sorted(SPLASH_CASES))
def test_splash_interpreted_equals_chunked(case):
  """`splash` (the Pallas TPU kernel in interpret mode) equals `chunked` forward and backward,
  float32: padding and packed rows as segment ids, grouped-query heads, a length padded to the
  kernel's 128 lanes."""
  q, k, v, mask, seg, cot = _inputs(SPLASH_CASES[case], seed=1)
  out_c, g_c = _run("chunked", q, k, v, mask, seg, cot, chunk=64)
  out_s, g_s = _run("splash", q, k, v, mask, seg, cot)
  _assert_close(out_s, out_c, mask, 2e-6, "output")
  for name, a, b in zip("qkv", g_s, g_c):
    np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("mesh_shape", [{"data": 2, "fsdp": 2, "tensor": 2}, {"tensor": 8}])
def test_splash_sharded_equals_unsharded(mesh_shape):
  """`splash` under an `activation_sharding` mesh runs in shard_map (batch over data x fsdp,
  heads over tensor where both head counts divide it, else whole): the unsharded output and
  gradients, grouped-query heads, packed rows."""
  mesh = shd.make_mesh(mesh_shape)
  q, k, v, mask, seg, cot = _inputs((4, 128, 8, 2, 16, "packed"), seed=2)
  ref = _run("splash", q, k, v, mask, seg, cot)
  with shd.activation_sharding(mesh):
    got = jax.jit(lambda *a: _run("splash", *a))(q, k, v, mask, seg, cot)
  _assert_close(got[0], ref[0], mask, 1e-6, "output")
  for name, a, b in zip("qkv", got[1], ref[1]):
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"d{name}")


def test_model_forward_prefill_and_decode_on_each_backend():
  """Through the model: `Qwen3Config.attention` = xla / splash gives the chunked model's logits
  on a left-padded batch (float32), and the sampler (prefill on the backend, then the decode
  step, which is the same on every backend) the chunked model's greedy tokens and log-probs."""
  cfg = models.get_preset("tiny").model.replace(attention_chunk=32)
  graphdef, params = models.init_params(cfg, seed=2)
  rng = np.random.default_rng(3)
  b, t = 2, 128
  mask = np.ones((b, t), bool)
  mask[1, :45] = False
  tokens = jnp.asarray(np.where(mask, rng.integers(1, cfg.vocab_size, (b, t)), 0), jnp.int32)
  mask = jnp.asarray(mask)
  ref = models.forward_logits(graphdef, params, tokens, mask)
  greedy = S.SamplingConfig(max_new_tokens=6, greedy=True, prompt_buckets=(t,))
  ref_out = S.sample(graphdef, params, tokens, mask, jax.random.key(0), greedy)
  for backend in ("xla", "splash"):
    g, _ = models.abstract_model(cfg.replace(attention=backend))
    _assert_close(models.forward_logits(g, params, tokens, mask), ref, mask, 2e-5, backend)
    out = S.sample(g, params, tokens, mask, jax.random.key(0), greedy)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref_out.tokens))
    np.testing.assert_allclose(out.policy_log_probs, ref_out.policy_log_probs, atol=2e-5)


def test_backend_choice_and_fallbacks():
  """`auto` resolves per platform; a backend the platform cannot run is a one-line config
  error; cudnn hands float32 inputs to xla (logged once); unknown names are refused."""
  assert [A.resolve("auto", p) for p in ("tpu", "gpu", "cpu")] == ["splash", "xla", "chunked"]
  c = config_lib.base_config()
  assert config_lib.preset_model(c, platform="cpu").attention == "chunked"
  assert config_lib.preset_model(c, platform="tpu").attention == "splash"
  c.model.attention = "cudnn"
  with pytest.raises(ConfigError, match="cudnn needs an NVIDIA GPU"):
    config_lib.preset_model(c, platform="cpu")
  assert config_lib.preset_model(c, platform="gpu").attention == "cudnn"
  c.model.attention = "splash"
  with pytest.raises(ConfigError, match="TPU kernel"):
    config_lib.preset_model(c, platform="gpu")
  with pytest.raises(ValueError, match="attention backend"):
    A.resolve("flash")
  with pytest.raises(ValueError, match="attention="):
    models.get_preset("tiny").model.replace(attention="flash")
  q, k, v, mask, seg, cot = _inputs("packed_gqa")
  A._LOGGED.clear()
  out = A.attention(q, k, v, mask, backend="cudnn", segment_ids=seg)
  _assert_close(out, A.attention(q, k, v, mask, backend="xla", segment_ids=seg), mask, 0.0,
                "cudnn -> xla")
  assert any("runs on xla" in m for m in A._LOGGED)
