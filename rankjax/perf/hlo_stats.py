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


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str
  bytes: int
  shape: str
  op_name: str = ""  # The JAX name stack of the op (metadata), with its named scopes.
  groups: tuple[tuple[int, ...], ...] = ()  # Its replica groups (partition ids); () = all devices.


def _groups(line: str) -> tuple[tuple[int, ...], ...]:
  """replica_groups={{0,4},{1,5}} or the iota form [groups,size]<=[dims]T(perm)."""
  m = _IOTA_GROUPS.search(line)
  if m:
    ids = np.arange(math.prod(int(d) for d in m.group(3).split(","))).reshape([int(d) for d in m.group(3).split(",")])
    if m.group(4):
      ids = ids.transpose([int(d) for d in m.group(4).split(",")])
    return tuple(tuple(int(i) for i in g) for g in ids.reshape(int(m.group(1)), int(m.group(2))))
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
    out.append(Collective(m.group("kind"), size, shape, name.group(1) if name else "", _groups(line)))
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
  the op names no groups)."""
  groups = op.groups or (tuple(range(len(host_of))),)
  shares = [sum(host_of[j] != host_of[i] for j in g) / len(g) for g in groups for i in g]
  return op.bytes * float(np.mean(shares))
