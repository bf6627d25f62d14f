"""The benchmark harness runs and reports (no timing is asserted: speed is never a test)."""
import json
import os

import pytest
import torch

import manual_ops
from manual_ops import bench


def test_run_reports_every_case_with_ratios_as_json():
    lines = []
    results = bench.run(["pool"], reps=1, warmup=0, as_json=True, log=lines.append)
    report = json.loads(lines[-1])
    assert [r["name"] for r in report["results"]] == [r.name for r in results] and results
    assert all(r.ours_ms > 0 and r.builtin_ms > 0 and r.ratio == r.ours_ms / r.builtin_ms for r in results)
    assert all(0 < r.ours_min_ms <= r.ours_ms and 0 < r.builtin_min_ms <= r.builtin_ms for r in results)
    assert [r["min_ratio"] for r in report["results"]] == [r.ours_min_ms / r.builtin_min_ms for r in results]
    assert report["geomean_min"]["pool"] == pytest.approx(bench.geomean(r.min_ratio for r in results))
    assert report["geomean"]["pool"] == pytest.approx(bench.geomean(r.ratio for r in results))
    assert torch.tensor(1e-40).item() != 0.0  # flushing denormals ended with the run
    assert report["capability"] == manual_ops.cpu_capability() and report["threads"] == torch.get_num_threads()
    assert report["cpu"] and set(report["cpu_flags"]) <= set(bench._ISA_FLAGS)


def test_table_starts_with_the_machine_it_was_measured_on():
    lines = []
    bench.run(["pool"], reps=1, warmup=0, log=lines.append)
    where = bench.machine()
    assert lines[0].startswith(f"{where['cpu']} (") and f"our kernels: {where['capability']}," in lines[0]
    assert f"bf16 GEMM: {where['bf16_gemm']};" in lines[0]
    assert where["bf16_gemm"] == manual_ops.low_precision_gemm(torch.bfloat16)
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        assert where["cpu_flags"] == [flag for flag in bench._ISA_FLAGS if flag in flags]


def test_forward_backward_clears_grads_between_runs():
    x = torch.ones(3, requires_grad=True)
    step = bench.forward_backward(lambda: x * 2, (x,), torch.ones(3))
    step()
    step()
    assert torch.equal(x.grad, torch.full((3,), 2.0))  # not accumulated to 4


def test_peak_memory_sees_the_allocations():
    n = 1 << 20
    assert bench.peak_memory(lambda: torch.empty(n, dtype=torch.float32) + 1) >= 2 * 4 * n


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match=r"unknown benchmark family \['nope'\]"):
        bench.run(["nope"])


def test_measure_times_our_float32_run_alongside():
    calls = []
    case = bench.Case("f", "c", lambda: calls.append("ours"), lambda: calls.append("builtin"),
                      ours_fp32=lambda: calls.append("fp32"))
    r = bench.measure(case, reps=3, warmup=1)
    assert calls.count("fp32") == calls.count("ours") == 4
    assert r.ours_fp32_ms > 0 and r.ratio_fp32 == r.ours_ms / r.ours_fp32_ms
    assert "ours/ours float32" in bench.format_table([r])


def test_bf16_families_run_in_bfloat16():
    assert {f"{f}-bf16" for f in ("conv", "bn", "pool", "basic", "train", "small")} <= set(bench.FAMILIES)
    results = bench.run(["pool-bf16"], reps=1, warmup=0, log=lambda line: None)
    assert results and all(r.family == "pool-bf16" for r in results)
    from manual_ops.bench import conv
    cases = conv.cases(batch=2, dtype=torch.bfloat16)
    assert all(c.ours_fp32 is not None for c in cases)
    cases[0].ours()  # runs in bfloat16 (a float32 weight would raise: the dtypes must match)


def test_train_cases_cover_both_memory_formats():
    from manual_ops.bench import train_step

    cases = train_step.cases(batch=2)
    assert sorted(c.name for c in cases) == sorted(
        f"{m} step, batch 2, {f}" for m in train_step.MODELS for f in ("NCHW", "channels_last"))


def test_conv_cases_report_gflops_of_forward_and_both_gradients():
    from manual_ops.bench import conv

    # 64->64 3x3 @32, batch 32: 32 * 64 * 64 * 9 * 32 * 32 multiply-adds in each of Y, dX and dW.
    assert conv.flops(32, 64, 64, 32, 3, 1, 1) == 3 * 2 * 32 * 64 * 64 * 9 * 32 * 32
    assert conv.flops(32, 64, 128, 32, 3, 2, 1) == 3 * 2 * 32 * 128 * 64 * 9 * 16 * 16
    r = bench.Result("conv", "x", ours_ms=2.0, builtin_ms=4.0, ours_min_ms=2.0, builtin_min_ms=4.0, flops=8e9)
    assert (r.ours_gflops, r.builtin_gflops) == (4000.0, 2000.0)
    assert "GFLOP/s: ours 4000, built-in 2000" in bench.format_table([r])
    assert bench.Result("pool", "y", 1.0, 1.0, 1.0, 1.0).ours_gflops is None


def test_small_family_covers_every_layer_kind_of_the_main_job_and_its_step():
    from manual_ops.bench import small

    cases = small.cases()
    names = [c.name for c in cases]
    assert all(c.family == "small" for c in cases)
    assert [n for n in names if n.startswith("conv ")] == [f"conv {c[0]}" for c in small.CONVS]
    for kind in ("bn C16 @8", "relu", "adaptive avg", "linear", "cross_entropy", "resnet-small step"):
        assert any(n.startswith(kind) for n in names), kind
    for case in cases:  # each side runs: the shapes are those of the digits network
        case.ours(), case.builtin()


def test_per_sample_family_times_vmap_grad_and_a_loop():
    from manual_ops.bench import per_sample

    assert bench.FAMILIES["per-sample"] == ("per_sample", torch.float32) and "per-sample-bf16" not in bench.FAMILIES
    cases = per_sample.cases(batch=2, input_size=8)
    assert [c.name for c in cases] == ["resnet-small vmap(grad), batch 2",
                                       "resnet-small grad in a Python loop, batch 2",
                                       "resnet-small BatchGrad (extensions) vs built-in vmap(grad), batch 2",
                                       "resnet-small BatchL2Grad (extensions) vs built-in vmap(grad), batch 2"]
    vmapped, looped = cases[0].ours(), cases[1].ours()  # per-sample grads, stacked and as a list
    builtin = cases[0].builtin()
    cases[2].ours(), cases[3].ours()  # the extensions' runs (their values: tests/test_extensions.py)
    for name, g in vmapped.items():
        assert g.shape[0] == 2
        torch.testing.assert_close(g, torch.stack([sample[name] for sample in looped]))
        torch.testing.assert_close(g, builtin[name], rtol=1e-4, atol=1e-5)
    r = bench.measure(cases[0], reps=1, warmup=0)
    assert r.ours_ms > 0 and r.builtin_ms > 0


def test_norm_family_times_group_and_layer_norm_in_both_dtypes():
    from manual_ops.bench import norm
    for dtype in (torch.float32, torch.bfloat16):
        cases = norm.cases(dtype=dtype)
        assert {c.name.split()[0] for c in cases} == {"group_norm", "layer_norm"}
        for c in cases[:1] + cases[-1:]:  # one of each: they run, ours and the built-in
            c.ours(), c.builtin()
    assert "norm" in bench.FAMILIES and "norm-bf16" in bench.FAMILIES
