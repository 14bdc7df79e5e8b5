"""Device mesh factory and logical-axis sharding rules.

Three mesh axes, as in MaxText but kept small:
  data    pure data parallelism (parameters replicated),
  fsdp    data parallelism with parameters and optimizer state sharded,
  tensor  tensor (model) parallelism over heads / MLP / vocabulary.

Model code names the *logical* axes of each array ("embed", "mlp", "batch", ...);
`DEFAULT_RULES` maps them to mesh axes. The batch is split over (data, fsdp).
Mesh axis types are `AxisType.Auto` (GSPMD propagation), chosen explicitly
because `jax.make_mesh` defaults to explicit sharding in jax 0.10.
"""

from __future__ import annotations

import contextlib
import contextvars
import glob
import importlib.util
import math
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec as P

__all__ = ["MESH_AXES", "GOOGLE_PCI_VENDOR", "has_tpu_chip", "use_cpu_without_accelerator",
    "Rules", "DEFAULT_RULES", "make_mesh", "logical_to_spec", "named_sharding", "batch_sharding",
    "batch_split", "replicated", "put_global", "put_batch", "to_host", "is_main_process", "agree",
    "sync", "activation_sharding", "constrain", "constrain_to", "abstract_mesh"]

MESH_AXES = ("data", "fsdp", "tensor")

GOOGLE_PCI_VENDOR = "0x1ae0"  # the PCI vendor id of TPU chips


def has_tpu_chip(pci_devices: str = "/sys/bus/pci/devices") -> bool:
  """Whether a Google PCI device (a TPU chip) is attached to this host (the PCI vendor check
  that jax's own TPU probe makes, without importing jax internals)."""
  for vendor in glob.glob(os.path.join(pci_devices, "*", "vendor")):
    try:
      with open(vendor) as f:
        if f.read().strip() == GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def use_cpu_without_accelerator() -> None:
  """With libtpu installed (the `tpu` and `test` extras) jax tries a TPU backend first, and
  libtpu prints a screen of errors on a host without one. With no TPU chip and no GPU (or
  other) PJRT plugin the CPU is all there is: select it before jax looks. JAX_PLATFORMS and
  `jax_platforms` still decide when set. Call before the first jax computation."""
  if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms:
    return
  if importlib.util.find_spec("jax_plugins") is not None:
    return
  if not has_tpu_chip():
    jax.config.update("jax_platforms", "cpu")

# logical axis -> mesh axis (or tuple of mesh axes, or None for replicated).
Rules = Mapping[str, Any]
DEFAULT_RULES: dict[str, Any] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
    "norm": None,
    # activations and caches
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_vocab": "tensor",
    "cache_batch": ("data", "fsdp"),
    "cache_length": None,
}


def make_mesh(shape: Sequence[int] | Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """Builds a (data, fsdp, tensor) mesh. One entry may be -1 ("all remaining devices").

  Raises ValueError naming the requested shape and the device count when they do not match.
  """
  if isinstance(shape, Mapping):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
    shape = [shape.get(a, 1) for a in MESH_AXES]
  shape = [int(s) for s in shape]
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    if rest <= 0 or n % rest:
      raise ValueError(f"mesh shape {dict(zip(MESH_AXES, shape))} cannot be filled from "
                       f"{n} devices: {n} is not a multiple of {rest}")
    shape[shape.index(-1)] = n // rest
  if math.prod(shape) != n or min(shape) < 1:
    raise ValueError(f"mesh shape {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} "
                     f"devices but {n} are available ({jax.default_backend()}); change the "
                     f"config's mesh or the device count")
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: Sequence[str | None], rules: Rules = DEFAULT_RULES) -> P:
  """PartitionSpec for an array whose dimensions have the given logical names."""
  out, used = [], set()
  for name in axes:
    mesh_axes = rules.get(name) if name is not None else None
    if name is not None and name not in rules:
      raise KeyError(f"no sharding rule for logical axis {name!r}")
    if isinstance(mesh_axes, str):
      mesh_axes = (mesh_axes,)
    # A mesh axis may shard only one dimension of an array.
    mesh_axes = tuple(a for a in (mesh_axes or ()) if a not in used)
    used.update(mesh_axes)
    out.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*out)


def _axis_size(mesh: Mesh, entry) -> int:
  if entry is None:
    return 1
  names = (entry,) if isinstance(entry, str) else entry
  return math.prod(mesh.shape[a] for a in names)


def named_sharding(shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh,
                   rules: Rules = DEFAULT_RULES, name: str = "array") -> NamedSharding:
  """NamedSharding for `shape`, checking that every sharded dimension divides its mesh axes."""
  if len(shape) != len(axes):
    raise ValueError(f"{name}: shape {tuple(shape)} has {len(shape)} dims but logical axes "
                     f"{tuple(axes)} name {len(axes)}")
  spec = logical_to_spec(axes, rules)
  for dim, logical, entry in zip(shape, axes, spec):
    size = _axis_size(mesh, entry)
    if dim % size:
      raise ValueError(
          f"{name}: dimension {logical!r} of size {dim} does not divide mesh axis {entry!r} of "
          f"size {size} (mesh {dict(mesh.shape)}); pick a mesh whose {entry!r} size divides {dim}")
  return NamedSharding(mesh, spec)


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of a [batch, ...] input: batch over the data axes, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


def batch_split(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
  """How many ways the batch dimension is split over `mesh` (its batch axes' size)."""
  return _axis_size(mesh, logical_to_spec(("batch",), rules)[0])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# Host <-> mesh transfers. Multi-process runs keep the *whole* global batch on every host (the
# data pipeline is deterministic from the seed), so the host-side RL bookkeeping (groups,
# advantages, the buffer) sees every row, and these two helpers are the only place that differs
# between one process and many.


def put_global(x: Any, sharding: NamedSharding) -> jax.Array:
  """Places a host array that every process holds in full onto `sharding` (each process
  supplies the shards of its own devices)."""
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(put_global(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_batch(batch: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """Places a host batch (any pytree of [batch, ...] arrays: a typed batch or a dict) on the
  mesh, the batch axis over the data axes, with `put_global`."""
  return jax.tree.map(lambda v: put_global(v, batch_sharding(mesh, np.ndim(v), rules)), batch)


def to_host(tree: Any) -> Any:
  """Fetches a pytree of (possibly sharded) arrays to numpy, whole on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def is_main_process() -> bool:
  """Process 0 writes the run's files (metrics, results, tokenizer, prepared data)."""
  return jax.process_index() == 0


def agree(value: Any) -> Any:
  """Process 0's value of a host-side decision (a bool or number read from the shared workdir),
  so that every process takes the same branch, and so calls the same collectives."""
  if jax.process_count() == 1:
    return value
  out = multihost_utils.broadcast_one_to_all(np.asarray(value))
  return type(value)(out.item()) if isinstance(value, (bool, int, float)) else out


def sync(name: str) -> None:
  """Barrier across processes (no-op with one): e.g. after process 0 prepared files."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# Activation constraints. A mesh + rules set with `activation_sharding` make
# `constrain` pin activations; with none set it is the identity (single device).
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "real_jax_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Within this context, traced model code constrains activations to `mesh` by `rules`."""
  token = _ACTIVE.set((mesh, rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active_mesh() -> tuple[Mesh, Rules] | None:
  """The (mesh, rules) of the enclosing `activation_sharding`, or None outside one."""
  return _ACTIVE.get()


def axis_size(mesh: Mesh, entry) -> int:
  """Devices along a PartitionSpec entry of `mesh` (None: 1; a tuple: the product)."""
  return _axis_size(mesh, entry)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """`constrain_to` the mesh and rules of the active `activation_sharding` (none: `x`)."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  return constrain_to(x, mesh, axes, rules)


def constrain_to(x: jax.Array, mesh: Mesh | None, axes: Sequence[str | None],
                 rules: Rules = DEFAULT_RULES) -> jax.Array:
  """Sharding constraint of `x` by its logical `axes` on `mesh` (None: `x` unchanged). A dim
  that does not divide its mesh axes (e.g. a batch of 1 while sampling) is replicated, never
  silently mis-sharded."""
  if mesh is None:
    return x
  spec = logical_to_spec(axes, rules)
  spec = P(*[e if x.shape[i] % _axis_size(mesh, e) == 0 else None for i, e in enumerate(spec)])
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def abstract_mesh(shape: Sequence[int] | Mapping[str, int], num_devices: int):
  """A device-free (data, fsdp, tensor) mesh for planning shardings of hardware we do not have."""
  devices = list(range(num_devices))
  if isinstance(shape, Mapping):
    shape = [shape.get(a, 1) for a in MESH_AXES]
  shape = list(shape)
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    shape[shape.index(-1)] = len(devices) // rest
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh shape {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} "
                     f"devices, not {num_devices}")
  return AbstractMesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
