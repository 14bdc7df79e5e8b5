"""Per-device parameter and Adam-state bytes for every size preset under its default mesh.

  python -m real_jax.tools.memory_table

Uses abstract shapes and a device-free mesh: nothing is allocated.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from real_jax import sharding as shd
from real_jax.models import PRESETS, abstract_model, param_shardings


def preset_memory(name: str) -> dict:
  preset = PRESETS[name]
  mesh = shd.abstract_mesh(preset.mesh, preset.num_devices)
  _, abstract = abstract_model(preset.model)
  shardings = param_shardings(abstract, mesh)
  leaves = jax.tree.leaves(abstract)
  shard_leaves = jax.tree.leaves(shardings)
  params = sum(math.prod(x.shape) for x in leaves)
  per_device = sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                   for x, s in zip(leaves, shard_leaves))
  return {
      "preset": name, "params": params, "mesh": dict(mesh.shape),
      "devices": preset.num_devices, "param_dtype": preset.model.param_dtype,
      "param_bytes_per_device": per_device,
      # AdamW keeps two moments in the parameter dtype.
      "adam_bytes_per_device": 2 * per_device,
  }


def markdown_table(rows) -> str:
  lines = ["| preset | params | mesh (data, fsdp, tensor) | devices | params / device | Adam state / device |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    m = r["mesh"]
    lines.append(f"| {r['preset']} | {r['params']:,} | ({m['data']}, {m['fsdp']}, {m['tensor']}) | "
                 f"{r['devices']} | {r['param_bytes_per_device'] / 2**30:.2f} GiB | "
                 f"{r['adam_bytes_per_device'] / 2**30:.2f} GiB |")
  return "\n".join(lines)


def main():
  print(markdown_table([preset_memory(n) for n in PRESETS]))


if __name__ == "__main__":
  main()
