"""`rankjax profile`: its FLOP count agrees with an analytic count of the DLRM step, and it writes
the trace, the HLO and the report it promises."""

import json
import pathlib

import jax
import pytest

from helpers import REPO, TINY_CONFIG
from rankjax.cli import profile as profile_cli
from rankjax.experiment import compile_abstract
from rankjax.perf import profiling, roofline
from rankjax.config import load_config_file

SMALL_DLRM = str(REPO / "configs" / "dlrm_small_cpu.py")


def dlrm_train_step_flops(num_dense: int, num_sparse: int, dim: int, bottom: tuple, top: tuple,
                          batch: int) -> float:
  """Matrix-product FLOPs of one DLRM train step (models/dlrm.py), counted from the model.

  Forward: 2*B*in*out per Linear layer of both MLPs; the interaction's full gram einsum
  (rankjax.layers.dot_interaction) 2*B*F^2*D with F = num_sparse + 1 vectors. Backward: every
  Linear's weight gradient (2*B*in*out) and its input gradient (2*B*in*out) except for the
  bottom MLP's first layer, whose input is data; the gram's gradient, one product (G + G^T) x
  (2*B*F^2*D, the interaction's custom VJP). The top MLP's input is the bottom output plus
  F(F-1)/2 pairs.

  XLA's cost analysis also counts elementwise work (bias adds, ReLUs and their gradients, the
  loss, the SGD updates of ~0.46 M dense parameters and of the looked-up rows), which this count
  leaves out: +0.5% of the step on one device. On N devices XLA counts replicated work such as
  the dense update once per device: +1.2% at N = 8. Both stay well inside the 5% allowed.
  """
  num_vectors = num_sparse + 1
  bottom_sizes = [num_dense, *bottom]
  top_sizes = [dim + num_vectors * (num_vectors - 1) // 2, *top]
  layers = list(zip(bottom_sizes[:-1], bottom_sizes[1:])) + list(zip(top_sizes[:-1], top_sizes[1:]))
  forward = sum(2 * batch * i * o for i, o in layers)
  first_input_grad = 2 * batch * bottom_sizes[0] * bottom_sizes[1]
  gram = 2 * batch * num_vectors ** 2 * dim
  return forward + (2 * forward - first_input_grad) + 2 * gram


@pytest.mark.parametrize("num_devices", [1, 8])
def test_cost_analysis_flops_agree_with_the_analytic_dlrm_count(num_devices):
  config = load_config_file(SMALL_DLRM)
  m = config.model
  manifest = {"num_dense": 13, "vocab_sizes": list(config.data.synthetic.vocab_sizes), "hotness": [1] * 26}
  lowered, compiled = compile_abstract(config, manifest, jax.devices()[:num_devices])[1:]
  costs = profiling.step_costs(lowered, compiled, num_devices)
  analytic = dlrm_train_step_flops(13, 26, m.embed_dim, m.bottom_mlp, m.top_mlp, config.train.batch_size)
  # The "~5.8 GFLOP" step (5.78e9) less one of autodiff's two gram-gradient products.
  assert analytic == pytest.approx(5.734e9, rel=1e-3)
  assert costs["matmul_flops_by_dtype"] == {"f32": pytest.approx(analytic, rel=1e-9)}
  assert costs["flops"] == pytest.approx(num_devices * costs["flops_per_device"])
  assert costs["flops"] == pytest.approx(analytic, rel=0.05)
  assert costs["flops"] >= analytic  # Elementwise work only adds.


def test_profile_writes_trace_hlo_and_report_on_a_sharded_mesh(tmp_path, capsys):
  code = profile_cli.main(["--config", TINY_CONFIG, "--workdir", str(tmp_path), "--steps", "2", "--warmup", "1"])
  assert code == 0
  report = json.loads((tmp_path / "profile_report.json").read_text())
  assert report["devices"] == 8 and report["backend"] == "cpu"
  assert report["step_ms_median"] > 0 and report["samples_per_sec"] == pytest.approx(
      report["batch"] / report["step_ms_median"] * 1e3)
  assert report["flops"] == pytest.approx(8 * report["flops_per_device"]) and report["flops"] > 0
  assert report["memory_per_device"]["argument"] > 0 and report["memory_per_device"]["temp"] >= 0
  assert {"all-gather", "reduce-scatter"} <= set(report["collectives_per_device"])  # Row-wise tables.
  assert report["whole_table_passes"] >= 2  # At least the lookup's gather and the update's scatter.
  assert 0 < report["bytes_accessed_without_table_passes"] < report["bytes_accessed"]
  assert report["peak"]["dtype"] == "fp32" and report["peak"]["flops_per_s"] > 0
  bound = report["roofline"]
  assert bound["bound_s"] == max(bound["compute_s"], bound["memory_s"])
  # XLA:CPU's cost analysis includes the matmuls; on a GPU cuBLAS's are missing and the count is used.
  assert report["flops_for_roofline"] == max(report["flops"], sum(report["matmul_flops_by_dtype"].values()))
  assert bound["compute_s"] == pytest.approx(report["flops_for_roofline"] / report["peak"]["flops_per_s"])
  assert "cuBLAS" not in profiling.format_report(report)
  as_on_gpu = {**report, "flops": 0.05 * report["flops_for_roofline"]}
  assert "cuBLAS" in profiling.format_report(as_on_gpu)
  assert bound["fraction_of_roofline"] == pytest.approx(bound["bound_s"] / (report["step_ms_median"] / 1e3))
  by_scope = report["ms_per_step_by_scope"]
  assert {"bottom_mlp", "top_mlp (backward)", "dot_interaction", "sparse_update"} <= set(by_scope)
  assert all(ms >= 0 for ms in by_scope.values())
  traces = list(tmp_path.glob("profile/plugins/profile/*/*.xplane.pb"))
  assert traces and report["trace_files"] == [str(p) for p in traces]
  hlo = {name: pathlib.Path(path).read_text() for name, path in report["hlo_files"].items()}
  assert hlo["train_step.before_optimizations.txt"].startswith("HloModule")
  assert "stablehlo" in hlo["train_step.stablehlo.mlir"]
  assert "all-gather" in hlo["train_step.after_optimizations.txt"]
  printed = capsys.readouterr().out
  for row in ("compile", "step time (median)", "FLOPs per step", "memory per device", "collectives per device",
              "roofline bound", "xla_dump_to"):
    assert row in printed


def test_profile_without_workdir_exits_2(capsys):
  assert profile_cli.main(["--config", TINY_CONFIG]) == 2
  assert "workdir" in capsys.readouterr().err


@pytest.mark.parametrize("op_name, scope", [
    ("jit(train_step)/transpose(jvp(top_mlp))/dot_general", "top_mlp (backward)"),
    ("jit(train_step)/jvp(bottom_mlp)/max", "bottom_mlp"),
    ("jit(train_step)/sparse_update/dedupe/sort", "sparse_update"),
    ("jit(train_step)/reduce_sum", "(unscoped)"), ("jit(train_step)/transpose(jvp())/add", "(unscoped)")])
def test_scope_of_names_the_outermost_named_scope_and_the_backward_pass(op_name, scope):
  assert profiling.scope_of(op_name) == scope


@pytest.mark.parametrize("device_kind, name", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"), ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
    ("NVIDIA H200", "NVIDIA H200 SXM"), ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB"),
    ("NVIDIA A100-PCIE-40GB", "NVIDIA A100 40GB"), ("cpu", None)])
def test_gpu_peak_table_picks_the_datasheet_entry_for_each_device_kind(device_kind, name):
  peak = roofline.gpu_peak(device_kind)
  assert (peak.name if peak else None) == name


def test_compute_dtype_uses_tf32_peak_for_float32_matmuls_on_gpu_only():
  assert roofline.compute_dtype({"f32": 1.0}, "gpu") == "tf32"
  assert roofline.compute_dtype({"f32": 1.0}, "cpu") == "fp32"
  assert roofline.compute_dtype({"bf16": 3.0, "f32": 1.0}, "gpu") == "bf16"
