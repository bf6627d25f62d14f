"""The two versions of the kernels that have an AVX2/FMA one (csrc/cpu_capability.h): this process runs the
AVX2 code wherever the CPU has it, and a fresh process with MANUAL_OPS_CPU_CAPABILITY=default runs the
portable code, through the same parity tests against the built-in."""
import os
import subprocess
import sys

import pytest

import manual_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tests whose kernels have an AVX2 version, re-run with the portable code (relu's and cross_entropy's
# own files rerun theirs: test_portable_kernels_too, test_cross_entropy_kernels.py).
PORTABLE_RUNS = {
    "conv2d": ["tests/test_conv2d.py", "-k", "parity or layouts or gradcheck or large_batch or full_correlation or property or requested"],
    "batch_norm": ["tests/test_batch_norm.py", "-k", "parity or property or layouts or gradcheck"],
    "adaptive_avg_pool2d": ["tests/test_pooling.py", "-k", "adaptive"],
    "low precision": ["tests/test_low_precision.py", "-k", "conv2d or linear or batch_norm or relu or cross_entropy or pool"],
}


def _portable_env():
    return {**os.environ, "MANUAL_OPS_CPU_CAPABILITY": "default", "PYTHONPATH": ROOT}


def test_capability_is_chosen_per_process():
    assert manual_ops.cpu_capability() in ("avx2", "default")
    out = subprocess.run([sys.executable, "-c", "import manual_ops; print(manual_ops.cpu_capability())"],
                         env=_portable_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "default"


@pytest.mark.skipif(manual_ops.cpu_capability() != "avx2",
                    reason="this CPU runs the portable code already, in every other test")
@pytest.mark.parametrize("name", list(PORTABLE_RUNS))
def test_portable_kernels_match_builtin(name):
    args = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *PORTABLE_RUNS[name]]
    out = subprocess.run(args, env=_portable_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
