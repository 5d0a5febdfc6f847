"""Reads collectives out of compiled HLO text: which ops a step runs and how many bytes they produce.

Bytes are the size of each op's result on one device (for a reduce-scatter, the scattered
piece; for an all-gather, the gathered array): a per-device proxy for what crosses the links.
"""

from __future__ import annotations

import collections
import dataclasses
import re

KINDS = ("all-gather", "all-to-all", "reduce-scatter", "all-reduce", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_OP = re.compile(r"=\s*(?P<type>.+?)\s+(?P<kind>" + "|".join(KINDS) + r")(?P<start>-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str
  bytes: int
  shape: str
  op_name: str = ""  # The JAX name stack of the op (metadata), with its named scopes.


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
    out.append(Collective(m.group("kind"), size, shape, name.group(1) if name else ""))
  return out


def summarize(ops: list[Collective]) -> dict[str, dict[str, int]]:
  """{kind: {"count": n, "bytes": total}}."""
  summary: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
  for op in ops:
    summary[op.kind]["count"] += 1
    summary[op.kind]["bytes"] += op.bytes
  return dict(summary)
