"""`rankjax profile`: how far a config's train step is from the hardware limit, with the XLA
artefacts to find out why.

  rankjax profile --config configs/default.py --workdir /tmp/prof [--steps 10] [--warmup 3]

compiles the train step (timed), runs warm-up steps, times `--steps` steps, then traces as many
again and writes under WORKDIR:

  profile/plugins/profile/<run>/<host>.xplane.pb   XProf trace: `xprof --logdir WORKDIR/profile`
                           (pip install xprof) or `tensorboard --logdir WORKDIR/profile` with
                           tensorboard-plugin-profile
  hlo/train_step.before_optimizations.txt  HLO of the step as XLA receives it (whole-step shapes)
  hlo/train_step.stablehlo.mlir            the same step as jax lowered it (StableHLO)
  hlo/train_step.after_optimizations.txt   HLO after XLA's passes (per-device shapes, fusions)
  profile_report.json                      the figures of the printed table

FLOPs and bytes come from XLA's cost analysis of the compiled step, which counts one device's
program: the report multiplies them by the device count (replicated work, such as the dense
optimizer update, counts once per device). Matrix-product FLOPs are also read off the HLO before
partitioning, where shapes are the whole step's. XLA charges each gather and scatter with its
whole operand, so every lookup and sparse update counts whole embedding tables; the roofline
uses the bytes without those passes (`table_passes`). The roofline bound is max(FLOPs / peak
FLOP/s, bytes / peak bytes/s) over all devices; for a GPU the peaks come from a datasheet table
(rankjax/perf/roofline.py), for a CPU from a calibration run just before. The op time of the traced
steps is also summed by `jax.named_scope` (bottom_mlp, dot_interaction, sparse_update, ...).

For every pass of XLA, dump the HLO at each stage (and per-pass diffs) by rerunning with
  XLA_FLAGS="--xla_dump_to=/tmp/xla_dump --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=.*"
(drop --xla_dump_hlo_pass_re for only the before/after-optimisation modules; add
--xla_dump_hlo_as_html for graphs).
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import pathlib
import re
import statistics

import jax
import ml_collections
import numpy as np

from rankjax.config import task_class
from rankjax.embedding.engine import ROW_PAD_MULTIPLE
from rankjax.experiment import CompiledStep, abstract_state, compile_abstract, prepare
from rankjax.perf import hlo_stats, roofline

XLA_DUMP_FLAGS = "--xla_dump_to=/tmp/xla_dump --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=.*"
MEMORY_KINDS = ("argument", "output", "alias", "temp", "generated_code")


def _cost_analysis(compiled: jax.stages.Compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  return cost[0] if isinstance(cost, (list, tuple)) else cost  # A list of one dict in older jax.


def step_costs(lowered: jax.stages.Lowered, compiled: jax.stages.Compiled, num_devices: int) -> dict:
  """XLA's cost and memory analysis of a compiled step, its collectives and matmul FLOPs.

  `flops` and `bytes_accessed` are whole-step totals (per device x devices); memory and
  collective bytes are per device; `matmul_flops_by_dtype` is from the unpartitioned HLO.
  """
  cost = _cost_analysis(compiled)
  memory = compiled.memory_analysis()
  memory_bytes = ({k: int(getattr(memory, f"{k}_size_in_bytes")) for k in MEMORY_KINDS} if memory is not None
                  else None)
  if memory_bytes is not None:  # Donated inputs alias outputs: count those bytes once.
    memory_bytes["peak_estimate"] = (memory_bytes["argument"] + memory_bytes["output"] - memory_bytes["alias"]
                                     + memory_bytes["temp"] + memory_bytes["generated_code"])
  matmul = roofline.dot_flops_by_dtype(lowered.as_text(dialect="hlo"))
  return {
      "flops_per_device": float(cost.get("flops", 0.0)),
      "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
      "transcendentals_per_device": float(cost.get("transcendentals", 0.0)),
      "flops": float(cost.get("flops", 0.0)) * num_devices,
      "bytes_accessed": float(cost.get("bytes accessed", 0.0)) * num_devices,
      "matmul_flops_by_dtype": matmul,
      "memory_per_device": memory_bytes,
      "collectives_per_device": hlo_stats.summarize(hlo_stats.collectives(compiled.as_text())),
  }


def _bytes_per_device(tree) -> int:
  """Bytes of one device's shard of every array (or ShapeDtypeStruct with a sharding) in `tree`."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def table_passes(config: ml_collections.ConfigDict, manifest: dict, devices: list[jax.Device],
                 bytes_accessed_per_device: float, table_bytes_per_device: int) -> dict:
  """How many times XLA's bytes accessed counts the whole embedding state, and the bytes without.

  XLA's cost analysis charges a gather or scatter (fused or not) with its whole operand: every
  lookup or sparse update of a table counts the full table although it touches a few rows. The
  step is compiled again (from abstract inputs) with every vocabulary v grown to 2v + 1024 x
  devices rows, past any row padding, which keeps each table's size relative to the mean, so
  the planner's choices (but for its absolute replicate threshold); the part of bytes accessed
  that grows with the embedding state's bytes is passes x those bytes.
  """
  if not table_bytes_per_device:  # A task without embedding tables.
    return {"whole_table_passes": 0.0, "bytes_accessed_without_table_passes_per_device": bytes_accessed_per_device}
  grow = lambda v: 2 * int(v) + ROW_PAD_MULTIPLE * len(devices)  # noqa: E731
  grown = task_class(config.task.name).with_vocab_sizes(manifest, grow)
  grown_config = config.copy_and_resolve_references()  # Tables sized by config (dynamic, hashed) grow too.
  grown_config.embedding.overrides = tuple(
      f"{o.partition('=')[0]}={grow(o.partition('=')[2])}" if o.partition(":")[2].partition("=")[0] in ("capacity", "rows")
      else o for o in config.embedding.overrides)
  exp, _, compiled = compile_abstract(grown_config, grown, devices)
  grown_table_bytes = _bytes_per_device(abstract_state(exp, config.seed).embedding)
  passes = ((float(_cost_analysis(compiled).get("bytes accessed", 0.0)) - bytes_accessed_per_device)
            / (grown_table_bytes - table_bytes_per_device))
  return {"whole_table_passes": passes,
          "bytes_accessed_without_table_passes_per_device": bytes_accessed_per_device - passes * table_bytes_per_device}


_HLO_OP_NAME = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*\bmetadata=\{[^}]*\bop_name="([^"]*)"', re.M)
_WRAPPED = re.compile(r"^(\w+)\((.*)\)$")


def scope_of(op_name: str) -> str:
  """The model part an op belongs to: the outermost jax.named_scope in its op_name
  ("jit(train_step)/transpose(jvp(top_mlp))/dot_general" -> "top_mlp (backward)")."""
  parts = op_name.split("/")
  parts = parts[1:] if parts[0].startswith("jit(") else parts
  if len(parts) < 2:  # A bare primitive or an argument name: no scope around it.
    return "(unscoped)"
  head, backward = parts[0], False
  while m := _WRAPPED.match(head):  # jvp(x), transpose(jvp(x)), ...
    backward |= m.group(1) == "transpose"
    head = m.group(2)
  return (head or "(unscoped)") + (" (backward)" if backward and head else "")


def time_by_scope(trace_dir: pathlib.Path, hlo_text: str, steps: int) -> dict[str, float] | None:
  """Milliseconds per step spent in the step's ops, by named scope, summed over the threads or
  streams that ran them; from the trace's JSON export and the optimised HLO's op metadata."""
  traces = sorted(trace_dir.glob("plugins/profile/*/*.trace.json.gz"))
  module = re.match(r"HloModule ([\w.\-]+)", hlo_text)
  if not traces or not module:
    return None
  with gzip.open(traces[-1]) as f:
    events = json.load(f)["traceEvents"]
  processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  ops = [e for e in events if e.get("ph") == "X" and (e.get("args") or {}).get("hlo_module") == module.group(1)
         and "hlo_op" in e["args"]]
  on_device = [e for e in ops if processes.get(e["pid"], "").startswith("/device:")]  # Else the CPU's threads.
  scopes = {m.group(1): scope_of(m.group(2)) for m in _HLO_OP_NAME.finditer(hlo_text)}
  totals: dict[str, float] = collections.defaultdict(float)
  for e in on_device or ops:
    totals[scopes.get(e["args"]["hlo_op"], "(unscoped)")] += e["dur"] / 1e3 / steps  # Trace times are in µs.
  return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _peak(devices: list[jax.Device], dtype: str) -> dict | None:
  """Peak FLOP/s and bytes/s of all `devices` together, or None for a device kind not in the table."""
  first = devices[0]
  if first.platform == "cpu":  # Simulated CPU devices share the host's cores: one host per process.
    peak, count = roofline.calibrate_cpu(first, dtype), jax.process_count()
  else:
    peak, count = roofline.gpu_peak(first.device_kind), len(devices)
    if peak is None:
      return None
  return {"name": peak.name, "source": peak.source, "dtype": dtype, "units": count,
          "flops_per_s": peak.flops[dtype] * count, "bytes_per_s": peak.bytes_per_s * count}


def write_hlo(step: CompiledStep, directory: pathlib.Path) -> dict[str, str]:
  """The step's HLO before and after XLA's optimisations, and its StableHLO; name -> path."""
  directory.mkdir(parents=True, exist_ok=True)
  texts = {"train_step.before_optimizations.txt": step.lowered.as_text(dialect="hlo"),
           "train_step.stablehlo.mlir": step.lowered.as_text(),
           "train_step.after_optimizations.txt": step.compiled.as_text()}
  for name, text in texts.items():
    (directory / name).write_text(text)
  return {name: str(directory / name) for name in texts}


def profile(config: ml_collections.ConfigDict, workdir: pathlib.Path, steps: int = 10, warmup: int = 3,
            devices: list[jax.Device] | None = None) -> dict:
  """Compiles, times and traces the config's train step; writes the trace, HLO and report."""
  workdir.mkdir(parents=True, exist_ok=True)
  step = prepare(config, workdir, devices)
  step.run(warmup)
  median_s = statistics.median(step.run(steps))
  trace_dir = workdir / "profile"
  with jax.profiler.trace(str(trace_dir)):
    step.run(steps)
  traces = sorted(str(p) for p in trace_dir.glob("plugins/profile/*/*.xplane.pb"))

  devices = step.devices
  costs = step_costs(step.lowered, step.compiled, len(devices))
  costs.update(table_passes(config, step.exp.manifest, devices, costs["bytes_accessed_per_device"],
                            _bytes_per_device(step.state.embedding)))
  bytes_needed = costs["bytes_accessed_without_table_passes_per_device"] * len(devices)
  dtype = roofline.compute_dtype(costs["matmul_flops_by_dtype"], devices[0].platform)
  peak = _peak(devices, dtype)
  batch = config.train.batch_size
  # XLA:GPU's cost analysis leaves out the matrix products it hands to cuBLAS (custom calls): on an
  # H200 the MLPerf-shaped DCNv2 step counted 298 GFLOP against 6.3 TFLOP of matmuls. The roofline
  # takes the larger of the two counts (on a CPU the cost analysis, which includes the products).
  flops = max(costs["flops"], sum(costs["matmul_flops_by_dtype"].values()))
  report = {
      "devices": len(devices), "backend": devices[0].platform, "device_kind": devices[0].device_kind,
      "batch": batch, "compile_s": step.compile_s,
      "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
      "step_ms_median": median_s * 1e3, "timed_steps": steps, "warmup_steps": warmup,
      "samples_per_sec": batch / median_s,
      **costs,
      "bytes_accessed_without_table_passes": bytes_needed,
      "flops_for_roofline": flops,
      "achieved_flops_per_s": flops / median_s,
      "achieved_bytes_per_s": bytes_needed / median_s,
      "peak": peak,
      "roofline": (roofline.bound(flops, bytes_needed, median_s, peak["flops_per_s"], peak["bytes_per_s"])
                   if peak else None),
      "ms_per_step_by_scope": time_by_scope(trace_dir, step.compiled.as_text(), steps),
      "trace_files": traces, "trace_logdir": str(trace_dir),
      "hlo_files": write_hlo(step, workdir / "hlo"),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if jax.process_index() == 0:
    (workdir / "profile_report.json").write_text(json.dumps(report, indent=2) + "\n")
  return report


def _si(value: float, unit: str) -> str:
  for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(value) >= factor:
      return f"{value / factor:,.3g} {prefix}{unit}"
  return f"{value:,.3g} {unit}"


def format_report(report: dict) -> str:
  """The printed table of a profile report."""
  n = report["devices"]
  rows = [
      ("device", f"{n} x {report['device_kind']} ({report['backend']})"),
      ("compile", f"{report['compile_s']:.2f} s"),
      ("step time (median)", f"{report['step_ms_median']:.2f} ms over {report['timed_steps']} steps, "
                             f"batch {report['batch']:,}"),
      ("samples/s", f"{report['samples_per_sec']:,.0f}"),
      ("FLOPs per step", f"{_si(report['flops'], 'FLOP')} (cost analysis: "
                         f"{_si(report['flops_per_device'], 'FLOP')} per device x {n})"),
      ("  matmul", ", ".join(f"{_si(v, 'FLOP')} {k}" for k, v in report["matmul_flops_by_dtype"].items())
       + " (unpartitioned HLO)" if report["matmul_flops_by_dtype"] else "none"),
      ("bytes accessed", f"{_si(report['bytes_accessed'], 'B')} ({_si(report['bytes_accessed_per_device'], 'B')}"
                         f" per device x {n}), of which {report['whole_table_passes']:.2f} whole-table passes"),
      ("  without those", f"{_si(report['bytes_accessed_without_table_passes'], 'B')} (used below)"),
      ("achieved", f"{_si(report['achieved_flops_per_s'], 'FLOP/s')}, {_si(report['achieved_bytes_per_s'], 'B/s')}"),
  ]
  if report["flops_for_roofline"] > report["flops"]:
    rows.insert(7, ("  for the roofline", f"{_si(report['flops_for_roofline'], 'FLOP')}: the matmuls, which the cost "
                                    "analysis leaves out when a library (cuBLAS) runs them"))
  memory = report["memory_per_device"]
  if memory:
    rows.append(("memory per device", ", ".join(f"{k} {_si(memory[k], 'B')}" for k in MEMORY_KINDS)
                 + f"; peak ~{_si(memory['peak_estimate'], 'B')}"))
  collectives = report["collectives_per_device"]
  rows.append(("collectives per device", ", ".join(f"{k} x{v['count']} {_si(v['bytes'], 'B')}"
                                                   for k, v in sorted(collectives.items())) or "none"))
  peak, bound = report["peak"], report["roofline"]
  if peak:
    rows.append(("peak", f"{_si(peak['flops_per_s'], 'FLOP/s')} {peak['dtype']}, {_si(peak['bytes_per_s'], 'B/s')}"
                         f" ({peak['name']} x {peak['units']}; {peak['source']})"))
    rows.append(("roofline bound", f"{bound['bound_s'] * 1e3:.2f} ms ({bound['bound_by']}: compute "
                                   f"{bound['compute_s'] * 1e3:.2f} ms, memory {bound['memory_s'] * 1e3:.2f} ms)"))
    rows.append(("step at", f"{bound['fraction_of_roofline']:.1%} of the roofline"))
  else:
    rows.append(("peak", f"no entry for {report['device_kind']} in rankjax/perf/roofline.py"))
  by_scope = report["ms_per_step_by_scope"]
  if by_scope:
    rows.append(("op time by scope", "; ".join(f"{k} {v:.2f} ms" for k, v in by_scope.items())
                 + " (per step, summed over threads/streams)"))
  rows += [("trace", f"{report['trace_logdir']} ({len(report['trace_files'])} xplane.pb): "
                     f"xprof --logdir {report['trace_logdir']}"),
           ("HLO", ", ".join(report["hlo_files"].values())),
           ("XLA dumps", f'rerun with XLA_FLAGS="{XLA_DUMP_FLAGS}"')]
  width = max(len(k) for k, _ in rows) + 2
  return "\n".join(f"{k:<{width}}{v}" for k, v in rows)
