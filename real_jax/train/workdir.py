"""A workdir is one run: the lock that keeps a second process out, and the run's identity.

  lock = WorkdirLock.acquire(workdir)          # before anything is written; WorkdirBusy if held
  identity = run_identity(config, stages, model_dir=..., tokenizer_dir=...)
  check_identity(workdir, identity)            # IdentityMismatch before anything is written
  ...
  lock.release()

**The lock** is `<workdir>/run.lock`, a JSON file {host, pid, started, heartbeat} created
atomically (`O_CREAT | O_EXCL`). The holder refreshes `heartbeat` every `HEARTBEAT_S` seconds
from a daemon thread. A lock is stale, and taken over with one log line, when its holder is gone:
on the same host, its pid no longer runs; on another host (shared storage), its heartbeat is
older than `STALE_AFTER_S`. `force=True` (`--force_unlock`) takes any lock, live or not.

**The identity** of a run is what gives its checkpoints and result rows their meaning: the
config fields minus `RESUMABLE` (budgets, logging, evaluation caps, checkpoint cadence, mesh),
the stages, and the content of the model and tokenizer files (not their paths: a re-pretrained
base at the same path is another model). It is hashed into `run.json` at the first start; a
later start compares before writing anything and refuses a mismatch naming the fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import struct
import threading
import time
from typing import Any, Mapping, Sequence

from absl import logging

from real_jax.train import config_lib

__all__ = ["LOCK_NAME", "RUN_INFO", "HEARTBEAT_S", "STALE_AFTER_S", "RESUMABLE", "WorkdirBusy",
    "IdentityMismatch", "resumable", "describe_holder", "WorkdirLock", "directory_fingerprint",
    "CONTENT_FIELDS", "data_fingerprint", "run_identity", "check_identity"]

LOCK_NAME = "run.lock"
RUN_INFO = "run.json"
HEARTBEAT_S = 30.0  # the holder rewrites its heartbeat this often
STALE_AFTER_S = 600.0  # a lock from another host whose heartbeat is older than this is stale

# Config fields (or groups, ending in ".") that may change when a run is resumed or extended:
# they change how long or how visibly it runs, not what its checkpoints and rows mean.
RESUMABLE = (
    "name",  # the row label
    "warmup.steps", "train.steps", "rl.steps", "pretrain.steps", "tract.stage1_steps",
    "tract.stage2_steps",  # budgets: a finished run can be extended (logged)
    "mesh.",  # the hardware: checkpoints restore onto another mesh
    "log.", "checkpoint.", "debug.",  # logging, checkpoint cadence, test hooks
    "eval.max_items", "eval.periodic_max_items", "eval.batch_size", "eval.every",
    "eval.at_end", "eval.after_warmup", "eval.before_training",  # evaluation effort and when
    "data.data_dir",  # where the prepared copy lives, not what it holds
    "rl.score_batch_size", "rl.sample_prompts", "rl.micro_batch_size",  # memory, not math
    "rl.log_samples_every", "rl.log_sample_groups",  # what rollouts.jsonl keeps
    "train.micro_batch_size", "warmup.micro_batch_size",
    "model.remat", "model.scan_layers",  # how the same model is computed
)

# Bytes read from each end of a weight file's data for the model's fingerprint (with its
# header and size): enough to tell retrained weights apart without reading tens of GiB.
_SAMPLE_BYTES = 1 << 20


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir's lock."""


class IdentityMismatch(RuntimeError):
  """The workdir holds another run (other method, model, data, recipe or seed)."""


def resumable(field: str) -> bool:
  """Whether `field` (a flattened config path) may change between starts of one run."""
  return any(field == r or (r.endswith(".") and field.startswith(r)) for r in RESUMABLE)


# ---------------------------------------------------------------------------------------------
# The lock


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process: alive
    return True
  return True


def _read_lock(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      out = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # damaged: treated as stale
  return out if isinstance(out, dict) else {}


def _stale_reason(holder: Mapping[str, Any], now: float) -> str | None:
  """Why a lock's holder is gone, or None when it may still run."""
  try:
    host, pid = holder.get("host"), int(holder.get("pid", -1))
    heartbeat = float(holder.get("heartbeat", 0.0))
  except (AttributeError, TypeError, ValueError):
    return "an unreadable lock file"
  if not holder:
    return "an unreadable lock file"
  if host == socket.gethostname():
    return None if _pid_alive(pid) else f"pid {pid} on this host no longer runs"
  age = now - heartbeat
  if age > STALE_AFTER_S:
    return f"its heartbeat from host {host} is {age:.0f} s old (> {STALE_AFTER_S:.0f} s)"
  return None


def describe_holder(holder: Mapping[str, Any]) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
  return f"pid {holder.get('pid')} on host {holder.get('host')} (since {started})"


def _write_new(path: str, info: Mapping[str, Any]) -> bool:
  """Creates `path` holding `info`, atomically: the content is written to a private file first
  and hard-linked into place, so no reader ever sees an empty or half-written lock. False when
  `path` exists already."""
  tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp"
  with open(tmp, "w") as f:
    json.dump(dict(info), f)
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  except OSError:  # a file system without hard links (e.g. gcsfuse): exclusive create, then write
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(dict(info), f)
    return True
  finally:
    os.remove(tmp)


def _remove_if_same(path: str, holder: Mapping[str, Any]) -> None:
  """Removes the lock file only if it still holds `holder` (another taker may have replaced it
  meanwhile): it is renamed away first, checked, and put back if it changed."""
  aside = f"{path}.{socket.gethostname()}.{os.getpid()}.stale"
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return
  if (_read_lock(aside) or {}) == dict(holder):
    os.remove(aside)
    return
  try:  # a fresh lock was moved: put it back (unless yet another one appeared)
    os.link(aside, path)
  except FileExistsError:
    pass
  os.remove(aside)


@dataclasses.dataclass
class WorkdirLock:
  """The held lock of one workdir; `release()` (or the context manager) gives it back."""
  path: str
  info: dict[str, Any]
  _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
  _thread: threading.Thread | None = None

  @classmethod
  def acquire(cls, workdir: str, *, force: bool = False) -> "WorkdirLock":
    """Takes `<workdir>/run.lock` (creating the workdir). Raises WorkdirBusy naming the holder
    when a live process has it (unless `force`)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}
    for _ in range(5):  # another taker may remove or create the file between our steps
      if _write_new(path, info):
        lock = cls(path, info)
        lock._start_heartbeat()
        return lock
      holder = _read_lock(path)
      if holder is None:
        continue  # released in between: try again
      reason = "--force_unlock" if force else _stale_reason(holder, time.time())
      if reason is None:
        raise WorkdirBusy(
            f"workdir {workdir} is in use by {describe_holder(holder)}; wait for it to finish, "
            "use another --workdir, or pass --force_unlock if that process is gone")
      logging.warning("taking over the lock of %s from %s: %s", workdir,
                      describe_holder(holder) if holder else "an unknown holder", reason)
      _remove_if_same(path, holder)
    raise WorkdirBusy(f"workdir {workdir}: could not take {path} (other processes keep taking "
                      "it); retry, or use another --workdir")

  def _start_heartbeat(self) -> None:
    def beat():
      while not self._stop.wait(HEARTBEAT_S):
        current = _read_lock(self.path)
        if current is None:
          continue  # briefly missing (another process checking it): beat next time
        if current.get("pid") != self.info["pid"] or current.get("host") != self.info["host"]:
          logging.warning("the lock %s was taken by another process (%s); this run no longer "
                          "holds its workdir", self.path, describe_holder(current or {}))
          return
        self.info["heartbeat"] = time.time()
        tmp = f"{self.path}.{socket.gethostname()}.{os.getpid()}.tmp"
        try:
          with open(tmp, "w") as f:
            json.dump(self.info, f)
          os.replace(tmp, self.path)
        except OSError:
          pass  # the next beat retries; a missing heartbeat only matters across hosts
    self._thread = threading.Thread(target=beat, name="workdir-lock", daemon=True)
    self._thread.start()

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    holder = _read_lock(self.path)
    if holder and holder.get("pid") == self.info["pid"] and holder.get("host") == self.info["host"]:
      os.remove(self.path)

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


# ---------------------------------------------------------------------------------------------
# The identity


def _hash_file(h, path: str) -> None:
  with open(path, "rb") as f:
    h.update(f.read())


def _hash_weights(h, path: str) -> None:
  """A safetensors file by its size, header and the first and last `_SAMPLE_BYTES` of its data
  (other weight files: size and those samples)."""
  size = os.path.getsize(path)
  h.update(str(size).encode())
  with open(path, "rb") as f:
    start = 0
    if path.endswith(".safetensors") and size >= 8:
      (n,) = struct.unpack("<Q", f.read(8))
      h.update(f.read(min(n, size - 8)))
      start = 8 + n
    f.seek(start)
    h.update(f.read(_SAMPLE_BYTES))
    f.seek(max(start, size - _SAMPLE_BYTES))
    h.update(f.read(_SAMPLE_BYTES))


_CONTENT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                  "chat_template.jinja", "special_tokens_map.json")


def directory_fingerprint(directory: str) -> str:
  """sha256 over a model or tokenizer directory's content: its config, tokenizer and index
  files whole, its weight files by size, header and samples (`_hash_weights`). "" for ""."""
  if not directory:
    return ""
  h = hashlib.sha256()
  names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
  for name in names:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    if name in _CONTENT_FILES or name.endswith(".index.json"):
      h.update(name.encode())
      _hash_file(h, path)
    elif name.endswith((".safetensors", ".bin", ".pt")):
      h.update(name.encode())
      _hash_weights(h, path)
  return h.hexdigest()


# Paths whose content, not location, is the run's: replaced in the identity by fingerprints.
CONTENT_FIELDS = ("model.hf_dir", "data.tokenizer", "init.checkpoint", "data.manual_dir")


def data_fingerprint(directory: str) -> str:
  """sha256 over the data files of a directory (`data.manual_dir`): each JSON/JSONL/parquet
  file by its name, size and the first and last `_SAMPLE_BYTES`. "" for ""."""
  if not directory or not os.path.isdir(directory):
    return ""
  h = hashlib.sha256()
  for base, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      if name.endswith((".json", ".jsonl", ".parquet")):
        path = os.path.join(base, name)
        h.update(os.path.relpath(path, directory).encode())
        _hash_weights(h, path)
  return h.hexdigest()


def run_identity(config, stages: Sequence[str], *, model_dir: str = "",
                 tokenizer_dir: str = "", init_checkpoint: str = "") -> dict[str, Any]:
  """{"hash": sha256 of "fields", "fields": {field: value} (the config minus RESUMABLE and the
  CONTENT_FIELDS paths, plus the stages and the content fingerprints of the model, tokenizer,
  starting checkpoint and data files), "budgets": the step budgets (not hashed)}."""
  flat = config_lib.flatten(config)
  fields = {k: v for k, v in flat.items() if not resumable(k) and k not in CONTENT_FIELDS}
  fields["stages"] = ",".join(stages)
  fields["model.content"] = directory_fingerprint(model_dir)
  same_dir = bool(tokenizer_dir) and os.path.abspath(tokenizer_dir) == os.path.abspath(
      model_dir or "/nonexistent")
  fields["data.tokenizer.content"] = ("= model.content" if same_dir
                                      else directory_fingerprint(tokenizer_dir))
  fields["init.checkpoint.content"] = (_checkpoint_fingerprint(init_checkpoint)
                                       if init_checkpoint else "")
  fields["data.manual_dir.content"] = data_fingerprint(flat.get("data.manual_dir", ""))
  fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(fields.items())}
  digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
  budgets = {k: v for k, v in sorted(flat.items()) if resumable(k) and k.endswith("steps")}
  return {"hash": digest, "fields": fields, "budgets": budgets}


def _checkpoint_fingerprint(path: str) -> str:
  """The run a chained run starts from, by its own identity hash (else its path)."""
  info = os.path.join(path, RUN_INFO)
  if os.path.isfile(info):
    with open(info) as f:
      return json.load(f).get("identity", {}).get("hash", os.path.abspath(path))
  return os.path.abspath(path)


def check_identity(workdir: str, identity: Mapping[str, Any]) -> str:
  """Compares `identity` with the one recorded in `<workdir>/run.json`; writes nothing.

  Returns "new" (no run.json), "same", "extended" (the same run with another step budget:
  logged) or "recorded" (a run.json from before identities: accepted, logged). Raises
  IdentityMismatch naming the differing fields otherwise.
  """
  path = os.path.join(workdir, RUN_INFO)
  if not os.path.exists(path):
    return "new"
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    raise IdentityMismatch(f"{path} cannot be read ({e}); the run in this workdir is unknown: "
                           "use a new --workdir") from None
  if not isinstance(recorded, dict):
    raise IdentityMismatch(f"{path} is not a run record (a JSON object); the run in this "
                           "workdir is unknown: use a new --workdir")
  old = recorded.get("identity")
  if not old:
    logging.info("workdir %s has no run identity (written before identities); recording it now",
                 workdir)
    return "recorded"
  if old.get("hash") != identity["hash"]:
    a, b = old.get("fields", {}), identity["fields"]
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = ", ".join(f"{k} {_short(a.get(k))} -> {_short(b.get(k))}" for k in diff[:6])
    more = f" (+{len(diff) - 6} more)" if len(diff) > 6 else ""
    raise IdentityMismatch(
        f"workdir {workdir} holds another run ({shown}{more}); use a new --workdir for this "
        "config (fields that may change on resume: real_jax.train.workdir.RESUMABLE)")
  before = old.get("budgets", {})
  changed = {k: (before.get(k), v) for k, v in identity["budgets"].items() if before.get(k) != v}
  lower = [f"{k} {a} -> {b}" for k, (a, b) in changed.items() if a is not None and b < a]
  if lower:
    raise IdentityMismatch(
        f"workdir {workdir}: step budgets may grow on resume, not shrink ({', '.join(lower)}): "
        "its checkpoints and rows already hold the longer run; use a new --workdir")
  if changed:
    logging.info("workdir %s: the same run with new step budgets: %s", workdir,
                 ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    return "extended"
  return "same"


def _short(v: Any) -> str:
  text = repr(v)
  return text if len(text) <= 40 else text[:18] + "…" + text[-12:]
