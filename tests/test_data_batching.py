"""Batching: tokenisation, left-padded buckets, seeded order, resumable position, mesh placement."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from real_jax.data import batching, records, synthetic
from real_jax.judge import prompts, scores


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return prompts.load_tokenizer(synthetic.build_synthetic_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def source():
  cfg = synthetic.SyntheticConfig(seed=4, train_size=30, test_size=4, ood_size=4)
  rows = synthetic.generate_all(cfg)
  opts = records.RecordOptions(ground_truth="orig_score")
  # Mixed difficulty so prompt lengths differ (test_ood_hard prompts are longer).
  mixed = rows["train"] + rows["test_ood_hard"]
  return [records.make_record(r, source="synthetic", row_id=r["id"], options=opts) for r in mixed]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _batcher(source, tok, **kw):
  kw.setdefault("batch_size", 4)
  kw.setdefault("buckets", (104, 112, 128))
  return batching.JudgeBatcher(source, tok, batching.BatchConfig(**kw), process_index=0,
                               process_count=1)


def test_left_padding_and_buckets(source, tok):
  it = _batcher(source, tok, seed=0)
  for batch in _take(it, 6):
    toks, mask, pos = batch["prompt_tokens"], batch["prompt_mask"], batch["prompt_positions"]
    L = toks.shape[1]
    lengths = []
    for row in range(toks.shape[0]):
      rec = source[batch["index"][row]]
      ids = prompts.render_chat(tok, rec["prompt"])
      n = len(ids)
      lengths.append(n)
      assert mask[row].tolist() == [0] * (L - n) + [1] * n  # left padded
      assert toks[row, L - n:].tolist() == ids
      assert (toks[row, :L - n] == tok.pad_token_id).all()
      assert pos[row, L - n:].tolist() == list(range(n)) and (pos[row, :L - n] == 0).all()
      assert batch["target"][row] == rec["target"] and batch["target_int"][row] == rec["target_int"]
    assert L == min(b for b in (104, 112, 128) if b >= max(lengths))
    assert toks.dtype == np.int32 and batch["valid"].tolist() == [1] * 4


def test_order_is_seeded_and_resumes_across_epochs(source, tok):
  n_batches_per_epoch = len(source) // 4
  a = _take(_batcher(source, tok, seed=7), 5)
  b = _take(_batcher(source, tok, seed=7), 5)
  _assert_batches_equal(a, b)
  c = _take(_batcher(source, tok, seed=8), 5)
  assert [x["index"].tolist() for x in a] != [x["index"].tolist() for x in c]

  it = _batcher(source, tok, seed=7)
  _take(it, n_batches_per_epoch - 2)
  state = json.loads(json.dumps(it.state()))  # JSON round trip, as in a checkpoint
  expected = _take(it, 6)  # crosses into the next epochs
  resumed = _batcher(source, tok, seed=7)
  resumed.restore(state)
  _assert_batches_equal(_take(resumed, 6), expected)
  # A new epoch visits the records in a different order.
  epoch0 = np.concatenate([x["index"] for x in _take(_batcher(source, tok, seed=7), n_batches_per_epoch)])
  it = _batcher(source, tok, seed=7)
  _take(it, n_batches_per_epoch)
  epoch1 = np.concatenate([x["index"] for x in _take(it, n_batches_per_epoch)])
  assert len(set(epoch0.tolist())) == len(epoch0) and epoch0.tolist() != epoch1.tolist()
  with pytest.raises(ValueError, match="different data order"):
    _batcher(source, tok, seed=8).restore(state)


def test_one_epoch_covers_every_record_once(source, tok):
  it = _batcher(source, tok, seed=1, num_epochs=1, drop_remainder=False, batch_size=8)
  batches = list(it)
  idx = np.concatenate([b["index"][b["valid"] == 1] for b in batches])
  assert sorted(idx.tolist()) == list(range(len(source)))
  last = batches[-1]
  n_pad = 8 - len(source) % 8
  assert last["valid"].tolist() == [1] * (8 - n_pad) + [0] * n_pad
  assert (last["prompt_mask"][last["valid"] == 0] == 0).all()
  assert all(b["prompt_tokens"].shape[0] == 8 for b in batches)


def test_overlong_prompts_skip_or_error(source, tok):
  lengths = np.array([len(prompts.render_chat(tok, r["prompt"])) for r in source])
  limit = int(np.median(lengths))
  n_long = int((lengths > limit).sum())
  assert 0 < n_long < len(source)
  it = _batcher(source, tok, seed=0, num_epochs=1, drop_remainder=False, max_prompt_len=limit,
                buckets=(limit,))
  kept = np.concatenate([b["index"][b["valid"] == 1] for b in it])
  assert sorted(kept.tolist()) == sorted(np.nonzero(lengths <= limit)[0].tolist())
  assert it.stats["prompt_too_long"] == n_long == it.state()["skipped"]["prompt_too_long"]
  err = _batcher(source, tok, seed=0, max_prompt_len=limit, buckets=(limit,), overlong="error")
  with pytest.raises(batching.PromptTooLongError, match=f"> max_prompt_len {limit}"):
    _take(err, len(source))


def test_sft_completions(source, tok):
  st = scores.resolve_score_tokens(tok)
  it = batching.JudgeBatcher(source, tok, batching.BatchConfig(
      batch_size=4, buckets=(128,), with_targets=True, completion_buckets=(48, 64)),
      process_index=0, process_count=1, score_tokens=st)
  for batch in _take(it, 4):
    for row in range(4):
      rec = source[batch["index"][row]]
      n = int(batch["completion_mask"][row].sum())
      ids = batch["completion_tokens"][row, :n].tolist()
      assert batch["completion_mask"][row].tolist() == [1] * n + [0] * (batch["completion_mask"].shape[1] - n)
      assert ids[-1] == tok.eos_token_id
      p = scores.parse_generation(ids, st)
      assert (p.status, p.score) == ("ok", rec["feedback_score"])
      assert tok.decode(ids[:p.cot_end - len(st.delimiter_ids)]).split() == \
          tok.decode(tok.encode(rec["feedback"], add_special_tokens=False)).split()
    seq = batching.sft_sequences(batch)
    for row in range(4):
      prompt_ids = prompts.render_chat(tok, source[batch["index"][row]]["prompt"])
      real = seq["tokens"][row][seq["mask"][row] == 1].tolist()
      completion = seq["tokens"][row][seq["loss_mask"][row] == 1].tolist()
      assert real == prompt_ids + completion and completion[-1] == tok.eos_token_id
      assert seq["positions"][row][seq["mask"][row] == 1].tolist() == list(range(len(real)))


def test_processes_get_disjoint_slices(source, tok):
  cfg = dict(batch_size=8, seed=3)
  whole = _take(batching.JudgeBatcher(source, tok, batching.BatchConfig(buckets=(104, 112, 128), **cfg),
                                      process_index=0, process_count=1), 3)
  parts = [_take(batching.JudgeBatcher(source, tok, batching.BatchConfig(buckets=(104, 112, 128), **cfg),
                                       process_index=p, process_count=2), 3) for p in range(2)]
  for k, w in enumerate(whole):
    for key in w:
      np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]), w[key])


def test_to_global_on_mesh(source, tok):
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4, 1), ("data", "fsdp", "tensor"))
  batch = next(_batcher(source, tok, batch_size=8))
  arrays = batching.to_global(batch, mesh)
  x = arrays["prompt_tokens"]
  assert x.shape == batch["prompt_tokens"].shape
  np.testing.assert_array_equal(np.asarray(x), batch["prompt_tokens"])
  assert x.sharding.spec[0] == ("data", "fsdp") and len(x.addressable_shards) == 8
  assert {s.data.shape for s in x.addressable_shards} == {(1, x.shape[1])}
  assert arrays["target"].shape == (8,)
  # Only "data" present in this mesh's batch axes: the extra name is ignored.
  arrays = batching.to_global(batch, Mesh(np.array(jax.devices()[:8]).reshape(8), ("data",)))
  assert arrays["index"].sharding.spec[0] == "data"
  bad = next(_batcher(source, tok, batch_size=6))
  with pytest.raises(ValueError, match="does not divide"):
    batching.to_global(bad, mesh)


def test_a_source_that_cannot_fill_a_batch_raises_instead_of_hanging(source, tok):
  """Every prompt over max_prompt_len, or fewer usable rows than one batch: an error naming the
  counts and the skip reasons after one pass, never an endless loop over epochs."""
  it = _batcher(source, tok, max_prompt_len=8)  # shorter than every prompt
  with pytest.raises(batching.TooFewRowsError,
                     match=rf"0 of {len(source)} records are usable \(skipped: "
                           rf"prompt_(far_)?too_long {len(source)}\), fewer than one batch of 4"):
    next(it)
  with pytest.raises(batching.TooFewRowsError, match=r"3 of 3 records are usable.*batch of 4"):
    next(_batcher(source[:3], tok))
  # The same 3 rows without drop_remainder (evaluation): one partial batch, then the end.
  ev = _batcher(source[:3], tok, drop_remainder=False, num_epochs=1, shuffle=False)
  assert int(next(ev)["valid"].sum()) == 3
  with pytest.raises(StopIteration):
    next(ev)
  # Enough rows: many epochs pass without the check tripping, also after a mid-epoch resume.
  ok = _batcher(source[:9], tok)
  _take(ok, 5)
  again = _batcher(source[:9], tok)
  again.restore(ok.state())
  _take(again, 5)
