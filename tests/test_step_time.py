"""The step-time prediction's arithmetic (rankjax/perf/step_time.py); `rankjax plan --predict-time`
is tested in test_bench_and_plan_cli.py, and its predictions against measured steps in BENCHMARKS.md
(a benchmark, not a timed test)."""

import pytest

from rankjax.perf import step_time


def test_gpus_split_the_step_and_a_cpu_host_runs_every_simulated_device():
  gpu = step_time.Peak("gpu", flops_per_s=1e12, bytes_per_s=1e11, link_bytes_per_s=1e10, host_shared=False,
                       launch_s=0.0, call_s=0.0)
  got = step_time.predict_from_costs(matmul_flops=8e9, bytes_accessed_per_device=2e8,
                                     collective_bytes_per_device=1e7, num_devices=8, batch_size=1000, peak=gpu)
  assert got["compute_s"] == pytest.approx(1e-3)  # 8e9 FLOPs over 8 GPUs at 1e12.
  assert got["memory_s"] == pytest.approx(2e-3) and got["collective_s"] == pytest.approx(1e-3)
  assert got["step_s"] == pytest.approx(4e-3) and got["samples_per_s"] == pytest.approx(250_000)
  assert got["roofline_s"] == pytest.approx(3e-3)
  host = step_time.Peak("cpu", flops_per_s=1e11, bytes_per_s=1e10, link_bytes_per_s=1e10, host_shared=True,
                        launch_s=1e-5, call_s=1e-4)
  got = step_time.predict_from_costs(8e9, 2e8, 1e7, num_devices=8, batch_size=1000, peak=host, kernels_per_device=100)
  assert got["compute_s"] == pytest.approx(0.08)  # All 8 devices' work on one host.
  assert got["memory_s"] == pytest.approx(0.16) and got["collective_s"] == pytest.approx(0.008)
  assert got["overhead_s"] == pytest.approx(8 * 100 * 1e-5 + 1e-4)  # Every device's kernels, one call.


def test_kernels_are_the_entry_computation_instructions_that_run():
  hlo = """HloModule m

%fused (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %n = f32[4]{0} negate(%p)
}

ENTRY %main (a: f32[4]) -> (f32[4], f32[4]) {
  %a = f32[4]{0} parameter(0)
  %c = f32[] constant(1)
  %f = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused
  %s = f32[4]{0} sort(%f), dimensions={0}, to_apply=%cmp
  %t = (f32[4]{0}, f32[4]{0}) tuple(%f, %s)
  ROOT %g = f32[4]{0} get-tuple-element(%t), index=0
}
"""
  assert step_time._entry_kernels(hlo) == 2


def test_every_gpu_kind_has_datasheet_peaks_and_a_link():
  for kind in step_time.DEVICE_KINDS[1:]:
    peak = step_time.peak_for(kind, None, "bf16")
    assert peak.flops_per_s > 1e14 and peak.bytes_per_s > 1e12 and peak.link_bytes_per_s >= 3e11
