"""Reads collectives out of compiled HLO text: which ops a step runs and how many bytes they produce.

Bytes are the size of each op's result on one device (for a reduce-scatter, the scattered
piece; for an all-gather, the gathered array): a per-device proxy for what crosses the links.
`cross_host_bytes` takes the share of them that comes from devices of other hosts, by the op's
replica groups (partition ids, in the mesh's device order).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import numpy as np

KINDS = ("all-gather", "all-to-all", "reduce-scatter", "all-reduce", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_OP = re.compile(r"=\s*(?P<type>.+?)\s+(?P<kind>" + "|".join(KINDS) + r")(?P<start>-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_GROUPS = re.compile(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")
# Shardy's form: replica_groups=mesh['a'=4,'b'=2], device_ids=([2,4]T(1,0)) {'a'}: groups along the
# listed axes of a mesh of those device ids (iota when absent).
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?"
                          r"\s*\{([^}]*)\}")
_PAIRS = re.compile(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}")


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str
  bytes: int
  shape: str
  op_name: str = ""  # The JAX name stack of the op (metadata), with its named scopes.
  groups: tuple[tuple[int, ...], ...] = ()  # Its replica groups (partition ids); () = all devices.
  pairs: tuple[tuple[int, int], ...] = ()  # A collective-permute's (source, target) partition ids.


def _iota(dims: str, perm: str | None) -> np.ndarray:
  """The ids of an iota device list [dims]T(perm), in the transposed shape."""
  shape = [int(d) for d in dims.split(",")]
  ids = np.arange(math.prod(shape)).reshape(shape)
  return ids.transpose([int(d) for d in perm.split(",")]) if perm else ids


def _groups(line: str) -> tuple[tuple[int, ...], ...]:
  """replica_groups={{0,4},{1,5}}, the iota form [groups,size]<=[dims]T(perm), or the mesh form."""
  m = _IOTA_GROUPS.search(line)
  if m:
    ids = _iota(m.group(3), m.group(4))
    return tuple(tuple(int(i) for i in g) for g in ids.reshape(int(m.group(1)), int(m.group(2))))
  m = _MESH_GROUPS.search(line)
  if m:
    axes = [(name.strip("'"), int(size)) for name, size in (a.split("=") for a in m.group(1).split(","))]
    sizes = [size for _, size in axes]
    ids = (_iota(m.group(2), m.group(3)) if m.group(2) else np.arange(math.prod(sizes))).reshape(sizes)
    listed = [a.strip().strip("'") for a in m.group(4).split(",") if a.strip()]
    order = [i for i, (name, _) in enumerate(axes) if name not in listed] + [
        [name for name, _ in axes].index(name) for name in listed]
    size = math.prod(sizes[[name for name, _ in axes].index(name)] for name in listed)
    return tuple(tuple(int(i) for i in g) for g in ids.transpose(order).reshape(-1, size))
  m = _GROUPS.search(line)
  if not m or not m.group(1):
    return ()
  return tuple(tuple(int(i) for i in g.split(",") if i) for g in re.findall(r"\{([\d,]*)\}", m.group(1)))


def _bytes(type_text: str) -> tuple[int, str]:
  shapes = _SHAPE.findall(type_text)
  total = 0
  for dtype, dims in shapes:
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * DTYPE_BYTES[dtype]
  return total, ", ".join(f"{d}[{s}]" for d, s in shapes)


def collectives(hlo_text: str) -> list[Collective]:
  out = []
  for line in hlo_text.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    type_text = m.group("type")
    if m.group("start"):  # Async pairs: (operand, result) tuple; count the result once.
      shapes = _SHAPE.findall(type_text)
      type_text = f"{shapes[-1][0]}[{shapes[-1][1]}]" if shapes else type_text
    size, shape = _bytes(type_text)
    name = _OP_NAME.search(line)
    pairs = _PAIRS.search(line)
    pairs = tuple(tuple(int(i) for i in p.split(",")) for p in re.findall(r"\{(\d+,\d+)\}", pairs.group(1))
                  ) if pairs else ()
    out.append(Collective(m.group("kind"), size, shape, name.group(1) if name else "", _groups(line), pairs))
  return out


def summarize(ops: list[Collective]) -> dict[str, dict[str, int]]:
  """{kind: {"count": n, "bytes": total}}."""
  summary: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
  for op in ops:
    summary[op.kind]["count"] += 1
    summary[op.kind]["bytes"] += op.bytes
  return dict(summary)


def cross_host_bytes(op: Collective, host_of: np.ndarray) -> float:
  """The part of `op`'s bytes that a device receives from other hosts (`host_of[partition id]`),
  averaged over the devices: its bytes x the share of its group on other hosts (all devices when
  the op names no groups); for a collective-permute, the share of its pairs that cross hosts."""
  if op.pairs:
    return op.bytes * float(np.mean([host_of[s] != host_of[t] for s, t in op.pairs]))
  groups = op.groups or (tuple(range(len(host_of))),)
  shares = [sum(host_of[j] != host_of[i] for j in g) / len(g) for g in groups for i in g]
  return op.bytes * float(np.mean(shares))
