"""The layer order of docs/architecture.md, checked on the source: no import circles, no import
that runs back up the layers, imports at the top of each file (function-local imports only of
optional heavy dependencies), and no docstring that points outside the repository."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "real_jax"


def _doc_ranks() -> dict[str, int]:
  """Rank of each module, bottom up, read from the layer table of docs/architecture.md (the one
  copy): a module imports only modules of a lower rank, or of the same rank inside its own
  package. `tools/` names a package, `train/rl.py` a module, `judge/__init__.py` a package's own
  file."""
  ranks = {}
  for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
    m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
    if not m:
      continue
    for path in re.findall(r"`([\w/]+(?:\.py|/))`", m.group(2)):
      name = path.rstrip("/").removesuffix(".py").removesuffix("__init__").rstrip("/")
      ranks[".".join(["real_jax"] + [p for p in name.split("/") if p])] = int(m.group(1))
  return ranks


RANKS = _doc_ranks()
# Function-local imports allowed: optional or test-only heavy dependencies, and the package's
# lazy `real_jax.Judge` attribute.
LOCAL_OK = {"torch", "transformers", "pyarrow.parquet", "tensorboardX", "wandb",
            "fastapi", "pydantic", "uvicorn", "real_jax.judging"}


def _modules():
  out = {}
  for path in PKG.rglob("*.py"):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


MODULES = _modules()


def _rank(mod: str) -> int:
  best = None
  for prefix, r in RANKS.items():
    if mod == prefix or mod.startswith(prefix + "."):
      if best is None or len(prefix) > len(best[0]):
        best = (prefix, r)
  assert best is not None, f"{mod} has no rank in RANKS: add it (and to docs/architecture.md)"
  return best[1]


def _package(mod: str) -> str:
  return mod if MODULES[mod].name == "__init__.py" else mod.rsplit(".", 1)[0]


def _imports(mod: str):
  """(imported real_jax module, line, at top level) for every import in `mod`."""
  tree = ast.parse(MODULES[mod].read_text())
  top = set(map(id, tree.body))
  out = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      base = node.module
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    for n in names:
      out.append((n, node.lineno, id(node) in top))
  return out


def test_every_module_has_a_rank():
  for mod in MODULES:
    _rank(mod)


def test_no_import_runs_back_up_the_layers():
  bad = []
  for mod in MODULES:
    for name, line, _ in _imports(mod):
      if not name.startswith("real_jax") or name not in MODULES or name == mod:
        continue
      if mod == "real_jax" or name == _package(mod):
        continue  # a package's __init__ re-exports; a module may read its own package's names
      same_pkg = _package(name) == _package(mod)
      if _rank(name) > _rank(mod) or (_rank(name) == _rank(mod) and not same_pkg):
        bad.append(f"{mod}:{line} imports {name} (rank {_rank(name)} >= {_rank(mod)})")
  assert not bad, "\n".join(bad)


def test_no_import_circles():
  graph = {m: {n for n, _, _ in _imports(m) if n in MODULES and n != m} for m in MODULES}
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for n in sorted(graph[m]):
      if n == "real_jax.judging" and m == "real_jax":
        continue  # the lazy attribute, imported on first use
      if state.get(n) == 1:
        cycles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n)
    stack.pop()
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m)
  # A submodule reading names of its own package's __init__ (which imports it) is Python's
  # package idiom, not a circle between layers.
  cycles = [c for c in cycles if not (len(c) == 3 and c[0] == _package(c[1]))]
  assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_imports_are_at_the_top():
  bad = []
  for mod in MODULES:
    for name, line, at_top in _imports(mod):
      if at_top or any(name == ok or name.startswith(ok + ".") for ok in LOCAL_OK):
        continue
      bad.append(f"{mod}:{line} imports {name} inside a function")
  assert not bad, "\n".join(bad)


OUTSIDE = ("DESIGN.md", "DESIGN \u00a7", "../shared", "official_code.md", "anchors.md")


@pytest.mark.parametrize("folder", ["real_jax", "tests", "benchmarks", "configs", "experiments",
                                    "docs", "notebooks", "assets", "README.md"])
def test_no_reference_outside_the_repository(folder):
  bad = []
  top = ROOT / folder
  paths = [top] if top.is_file() else sorted(
      p for ext in ("*.py", "*.md", "*.ipynb") for p in top.rglob(ext))
  for path in paths:
    if path.resolve() == pathlib.Path(__file__).resolve():
      continue
    for i, line in enumerate(path.read_text().splitlines(), 1):
      if any(o in line for o in OUTSIDE):
        bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
  assert not bad, ("point into the repository (docs/architecture.md), not to files a clone "
                   "does not have:\n" + "\n".join(bad))


def test_the_entry_modules_do_not_import_torch():
  """Importing the entry points (the tools too) pulls in neither torch nor tensorflow; a whole
  run is checked in tests/test_cli.py (`-X importtime`)."""
  import subprocess
  import sys
  code = ("import sys\nimport real_jax.main, real_jax.tools.export_hf, real_jax.tools.compare\n"
          "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                     cwd=ROOT)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_every_module_states_its_public_surface(mod):
  """Each module lists its public names in `__all__` (gemma's explicit surface), and every
  listed name exists at the module's top level (defined, assigned or imported)."""
  tree = ast.parse(MODULES[mod].read_text())
  listed = None
  top = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      top.add(node.name)
    elif isinstance(node, ast.Assign):
      for t in node.targets:
        if isinstance(t, ast.Name):
          top.add(t.id)
          if t.id == "__all__":
            listed = ast.literal_eval(node.value)
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      top.add(node.target.id)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      top.update((a.asname or a.name).split(".")[0] for a in node.names)
  if MODULES[mod].name == "__init__.py" and listed is None:
    return  # a package whose __init__ only documents its modules
  assert listed is not None, f"{mod} has no __all__"
  lazy = {"real_jax": {"Judge", "Grade"}}.get(mod, set())  # module __getattr__
  assert [n for n in listed if n not in top and n not in lazy] == [], mod
