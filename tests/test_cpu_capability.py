"""The copies of the kernels per CPU capability (csrc/cpu_capability.h): this process runs the highest
level the CPU has (avx512, avx2 or default), and a fresh process with MANUAL_OPS_CPU_CAPABILITY set to each
lower level runs that copy through the same parity tests against the built-in."""
import os
import subprocess
import sys

import pytest
import torch

import manual_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tests of the kernels with vectorised copies, re-run at each lower level (cross_entropy's own file
# also compares the portable kernels with this process's: test_cross_entropy_kernels.py).
PORTABLE_RUNS = {
    "cross_entropy": ["tests/test_cross_entropy_kernels.py", "-k", "exp or wide_rows"],
    "conv2d": ["tests/test_conv2d.py", "-k", "parity or layouts or gradcheck or large_batch or full_correlation or property or requested"],
    "batch_norm": ["tests/test_batch_norm.py", "-k", "parity or property or layouts or gradcheck"],
    # group_norm's passes are batch_norm's (row_totals included); layer_norm has its own row kernels
    "group_norm": ["tests/test_group_norm.py", "-k", "parity or low_precision or property"],
    "layer_norm": ["tests/test_layer_norm.py", "-k", "parity or float32 or low_precision or property or one_value"],
    "adaptive_avg_pool2d": ["tests/test_pooling.py", "-k", "adaptive"],
    "relu": ["tests/test_relu.py", "-k", "nan_and_signed_zero or parity or property"],
    "activations": ["tests/test_activations.py", "-k", "special_values or parity_float32 or low_precision"],
    "dropout": ["tests/test_dropout.py", "-k", "bit_for_bit and (contiguous or channels_last)"],
    "low precision": ["tests/test_low_precision.py", "-k", "conv2d or linear or batch_norm or relu or cross_entropy or pool"],
}


LEVELS = ["default", "avx2", "avx512"]
# The CPU flags each level needs (csrc/cpu_capability.cpp), named in the reason of a skip.
NEEDS = {"avx2": "avx2, fma and f16c", "avx512": "avx512f, avx512bw, avx512vl and avx512dq"}
THIS_PROCESS = manual_ops.cpu_capability()


def _env(level):
    return {**os.environ, "MANUAL_OPS_CPU_CAPABILITY": level, "PYTHONPATH": ROOT}


def _capability_in_child(level):
    out = subprocess.run([sys.executable, "-W", "always", "-c", "import manual_ops; print(manual_ops.cpu_capability())"],
                         env=_env(level), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), out.stderr


def test_this_process_runs_the_highest_level_the_cpu_has():
    assert THIS_PROCESS in LEVELS
    assert _capability_in_child(THIS_PROCESS)[0] == THIS_PROCESS


@pytest.mark.parametrize("level", LEVELS)
def test_a_lower_level_can_be_forced_and_a_higher_one_is_ignored_with_a_warning(level):
    got, stderr = _capability_in_child(level)
    if LEVELS.index(level) <= LEVELS.index(THIS_PROCESS):
        assert got == level and "ignoring" not in stderr
    else:
        assert got == THIS_PROCESS
        assert f"ignoring MANUAL_OPS_CPU_CAPABILITY={level}: this CPU supports at most {THIS_PROCESS}" in stderr


def test_an_unknown_level_is_ignored_with_a_warning():
    got, stderr = _capability_in_child("avx1024")
    assert got == THIS_PROCESS
    assert "ignoring invalid value for MANUAL_OPS_CPU_CAPABILITY: avx1024" in stderr


# Every level below this process's (which every other test runs) and, as skips, those the CPU lacks.
_LOWER = [pytest.param(level, marks=pytest.mark.skipif(
    LEVELS.index(level) > LEVELS.index(THIS_PROCESS), reason=f"this CPU lacks {NEEDS.get(level)}"))
    for level in LEVELS if level != THIS_PROCESS]


@pytest.mark.parametrize("level", _LOWER)
@pytest.mark.parametrize("name", list(PORTABLE_RUNS))
def test_each_capability_matches_builtin(name, level):
    args = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *PORTABLE_RUNS[name]]
    out = subprocess.run(args, env=_env(level), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout


# The bfloat16 / float16 GEMM paths (csrc/gemm.h, manual_ops.low_precision_gemm): this process runs the
# default for its CPU; a fresh process reruns the low-precision tests on each other path, so that none of
# them depends on the CPU at hand for its correctness (oneDNN's path is only slow on a CPU without bf16
# hardware). "mm" is what a CPU without AVX2 gets: our GEMM asked for at the portable level.
GEMM_PATHS = {"onednn": {"MANUAL_OPS_BF16_GEMM": "onednn"},
              "own": {"MANUAL_OPS_BF16_GEMM": "own"},
              "mm": {"MANUAL_OPS_BF16_GEMM": "own", "MANUAL_OPS_CPU_CAPABILITY": "default"}}
GEMM_RUN = ["tests/test_low_precision.py", "-k", "conv2d or linear or autocast or grad_scaler or opcheck"]


def _gemm_env(path):
    return {**os.environ, "PYTHONPATH": ROOT, **GEMM_PATHS[path]}


def _gemm_paths_in_child(env):
    code = ("import torch, manual_ops; "
            "print(manual_ops.low_precision_gemm(torch.bfloat16), manual_ops.low_precision_gemm(torch.float16))")
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split(), out.stderr


@pytest.mark.parametrize("path", list(GEMM_PATHS))
def test_each_bf16_gemm_path_is_chosen_and_matches_builtin(path):
    if path == "own" and THIS_PROCESS == "default":
        pytest.skip(f"this CPU lacks {NEEDS['avx2']}: our GEMM runs as at::mm ('mm')")
    got, _ = _gemm_paths_in_child(_gemm_env(path))
    assert got == [path, path]
    if got[0] == manual_ops.low_precision_gemm(torch.bfloat16) and "MANUAL_OPS_CPU_CAPABILITY" not in GEMM_PATHS[path]:
        pytest.skip("this process's own path, which the rest of the suite tests")
    args = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *GEMM_RUN]
    out = subprocess.run(args, env=_gemm_env(path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout


def test_an_unknown_bf16_gemm_path_is_ignored_with_a_warning():
    unset = {k: v for k, v in os.environ.items() if k != "MANUAL_OPS_BF16_GEMM"}
    default, _ = _gemm_paths_in_child({**unset, "PYTHONPATH": ROOT})
    got, stderr = _gemm_paths_in_child({**os.environ, "PYTHONPATH": ROOT, "MANUAL_OPS_BF16_GEMM": "amx"})
    assert got == default
    assert "ignoring invalid value for MANUAL_OPS_BF16_GEMM: amx (expected onednn or own)" in stderr


def test_low_precision_gemm_names_only_16_bit_dtypes():
    assert manual_ops.low_precision_gemm(torch.bfloat16) in GEMM_PATHS
    with pytest.raises(ValueError, match="expected torch.bfloat16 or torch.float16, but got torch.float32"):
        manual_ops.low_precision_gemm(torch.float32)
