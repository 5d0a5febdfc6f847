"""The import graph of rankjax/ (and the zoo, installed as rankjax.models) has no cycle, and runs
one way: data and embedding below tasks and models, the trainer above them, the CLI on top."""

import ast
import pathlib

from helpers import REPO

PACKAGE_ROOTS = {"rankjax": REPO / "rankjax", "rankjax.models": REPO / "models"}


def _modules() -> dict[str, pathlib.Path]:
  modules = {}
  for package, root in PACKAGE_ROOTS.items():
    for path in root.rglob("*.py"):
      parts = list(path.relative_to(root).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      modules[".".join([package, *parts])] = path
  return modules


def import_graph() -> dict[str, set[str]]:
  """module -> the rankjax modules it imports anywhere in its body (top level or in a function)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg.
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                   for a in node.names]
      else:
        continue
      edges |= {t for t in targets if t in modules and t != name}
    graph[name] = edges
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a list of modules, or None."""
  state: dict[str, int] = {}  # 1 = on the current path, 2 = done.
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = 2
    path.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_find_cycle_finds_a_planted_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_rankjax_has_no_import_cycle():
  graph = import_graph()
  assert "rankjax.tasks.ctr" in graph and "rankjax.models.dlrm" in graph
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def _imports_of(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
  return {m: deps for m, deps in import_graph().items() if m.startswith(prefixes)}


def test_layers_import_one_way():
  upper = ("rankjax.tasks", "rankjax.models", "rankjax.train", "rankjax.experiment", "rankjax.perf", "rankjax.cli")
  for module, deps in _imports_of(("rankjax.data", "rankjax.embedding")).items():
    assert not {d for d in deps if d.startswith(upper)}, (module, deps)
  for module, deps in _imports_of(("rankjax.tasks", "rankjax.models")).items():
    assert not {d for d in deps if d.startswith(upper[2:])}, (module, deps)
  for module, deps in import_graph().items():
    if not module.startswith("rankjax.cli"):
      assert not {d for d in deps if d.startswith("rankjax.cli")}, (module, deps)


def test_only_the_partitioner_calls_jax_jit():
  for path in [*(REPO / "models").glob("*.py"), *(REPO / "rankjax").rglob("*.py")]:
    if path != REPO / "rankjax" / "partitioner.py":
      assert "jax.jit(" not in path.read_text(), path
