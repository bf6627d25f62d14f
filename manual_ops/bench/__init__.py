"""Speed of manual_ops against torch's built-ins, measured side by side in one run.

Each family module (``manual_ops.bench.<module>``) has ``cases(dtype) -> list[Case]``. Every
case times ours and the built-in in interleaved repetitions after a warm-up, and reports
the median and the minimum of each and their ratios (ours / built-in; below 1 means we are
faster). On a shared machine the minimum is the steadier figure: load only ever adds time. The
``-bf16`` families run the same cases in bfloat16 (training steps: under bfloat16 autocast);
their conv cases also time our own float32 run, for the ratio of our bfloat16 to our float32.
"""
import importlib
import json
import math
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

# family name -> (module under manual_ops.bench, dtype of its cases)
_MODULES = {"conv": "conv", "bn": "batch_norm", "pool": "pooling", "basic": "basic", "train": "train_step",
            "small": "small", "act": "activation", "norm": "norm"}
FAMILIES = {**{name: (module, torch.float32) for name, module in _MODULES.items()},
            **{f"{name}-bf16": (module, torch.bfloat16) for name, module in _MODULES.items()},
            "per-sample": ("per_sample", torch.float32)}  # torch.func's vmap(grad) and a loop; no bf16 twin


@dataclass
class Case:
    """One benchmark: ``ours`` and ``builtin`` each run one forward+backward (or one step)."""

    family: str
    name: str
    ours: Callable[[], object]
    builtin: Callable[[], object]
    memory: bool = False  # also report the peak memory of one run of each
    ours_fp32: Callable[[], object] | None = None  # low-precision cases: our own float32 run, timed alongside
    flops: float | None = None  # floating-point operations of one run (multiply-adds count two), where known


@dataclass
class Result:
    family: str
    name: str
    ours_ms: float  # medians
    builtin_ms: float
    ours_min_ms: float
    builtin_min_ms: float
    ours_peak_mb: float | None = None
    builtin_peak_mb: float | None = None
    ours_fp32_ms: float | None = None
    flops: float | None = None

    @property
    def ours_gflops(self) -> float | None:
        """GFLOP/s of our median run."""
        return None if self.flops is None else self.flops / self.ours_ms / 1e6

    @property
    def builtin_gflops(self) -> float | None:
        return None if self.flops is None else self.flops / self.builtin_ms / 1e6

    @property
    def ratio(self) -> float:
        """Of the medians."""
        return self.ours_ms / self.builtin_ms

    @property
    def ratio_fp32(self) -> float | None:
        """Ours in this case's dtype / ours in float32."""
        return None if self.ours_fp32_ms is None else self.ours_ms / self.ours_fp32_ms

    @property
    def min_ratio(self) -> float:
        """Of the minima."""
        return self.ours_min_ms / self.builtin_min_ms


def forward_backward(forward, leaves, grad=None):
    """A callable that clears the grads of ``leaves`` (so that runs do not accumulate), runs
    ``forward()`` and backpropagates ``grad`` (or, when None, the sum of the output)."""
    def run():
        for t in leaves:
            t.grad = None
        out = forward()
        out.backward(grad) if grad is not None else out.sum().backward()
    return run


def _time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(case: Case, reps: int = 15, warmup: int = 3) -> Result:
    """Interleaves ``reps`` runs of ours and the built-in (and our float32 run, when the case has one),
    alternating which goes first; medians and minima in ms."""
    fns = {"ours": case.ours, "builtin": case.builtin}
    if case.ours_fp32 is not None:
        fns["ours_fp32"] = case.ours_fp32
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for i in range(reps):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            times[name].append(_time_once(fns[name]))
    median = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    result = Result(case.family, case.name, median["ours"], median["builtin"], 1e3 * min(times["ours"]),
                    1e3 * min(times["builtin"]), ours_fp32_ms=median.get("ours_fp32"), flops=case.flops)
    if case.memory:
        result.ours_peak_mb = peak_memory(case.ours) / 2**20
        result.builtin_peak_mb = peak_memory(case.builtin) / 2**20
    return result


def peak_memory(fn) -> int:
    """Peak bytes held by torch's CPU allocations made while ``fn()`` runs (from the profiler's
    allocation events: the running sum of allocated minus freed bytes, at its maximum)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()
        peak = max(peak, held)
    return peak


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def format_table(results: list[Result]) -> str:
    lines = [f"{'case':<50} {'ours ms':>10} {'built-in ms':>12} {'ratio':>7} {'min ms: ours':>13} {'built-in':>9}"
             f" {'ratio':>7}"]
    for family in dict.fromkeys(r.family for r in results):
        rows = [r for r in results if r.family == family]
        for r in rows:
            line = (f"{r.family + ': ' + r.name:<50} {r.ours_ms:>10.3f} {r.builtin_ms:>12.3f} {r.ratio:>7.2f}"
                    f" {r.ours_min_ms:>13.3f} {r.builtin_min_ms:>9.3f} {r.min_ratio:>7.2f}")
            if r.flops is not None:
                line += f"   GFLOP/s: ours {r.ours_gflops:.0f}, built-in {r.builtin_gflops:.0f}"
            if r.ours_fp32_ms is not None:
                line += f"   ours float32 {r.ours_fp32_ms:.3f} ms, ours/ours float32 {r.ratio_fp32:.2f}"
            if r.ours_peak_mb is not None:
                line += (f"   peak memory: ours {r.ours_peak_mb:.0f} MB, built-in {r.builtin_peak_mb:.0f} MB,"
                         f" ratio {r.ours_peak_mb / r.builtin_peak_mb:.2f}")
            lines.append(line)
        lines.append(f"{family + ': geometric mean':<50} {'':>10} {'':>12} {geomean(r.ratio for r in rows):>7.2f}"
                     f" {'':>13} {'':>9} {geomean(r.min_ratio for r in rows):>7.2f}")
    return "\n".join(lines)


# The CPU flags that decide which kernels run, ours and the built-in's (oneDNN's).
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def machine() -> dict:
    """What the figures were measured on: the CPU's model name, its flags of ``_ISA_FLAGS``, our kernels'
    capability (``manual_ops.cpu_capability()``), our bfloat16 GEMM path (``manual_ops.low_precision_gemm``),
    torch's version and thread count."""
    from manual_ops import cpu_capability, low_precision_gemm

    fields = {}  # the first CPU's "model name" and "flags" lines
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux: the model name from platform, no flags
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    return {"cpu": model, "cpu_flags": [f for f in _ISA_FLAGS if f in flags], "capability": cpu_capability(),
            "bf16_gemm": low_precision_gemm(torch.bfloat16), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def run(families=None, reps: int = 15, warmup: int = 3, as_json: bool = False, log=print) -> list[Result]:
    """Runs the named families (all by default) and prints a table, or JSON with ``as_json``; both
    start with the machine they were measured on (``machine()``).

    Denormals are flushed to zero while it measures and not afterwards (torch's default).
    """
    families = list(families or FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown benchmark family {unknown}; choose from {sorted(FAMILIES)}")
    where = machine()
    if not as_json:
        log(f"{where['cpu']} ({' '.join(where['cpu_flags']) or 'no AVX2'}); our kernels: {where['capability']},"
            f" bf16 GEMM: {where['bf16_gemm']}; torch {where['torch']}, {where['threads']} threads")
    torch.set_flush_denormal(True)
    try:
        results = []
        for family in families:
            module_name, dtype = FAMILIES[family]
            module = importlib.import_module(f"{__name__}.{module_name}")
            for case in module.cases(dtype=dtype):
                case.family = family
                results.append(measure(case, reps=reps, warmup=warmup))
                if not as_json:
                    r = results[-1]
                    log(f"  {r.family}: {r.name}: ours {r.ours_ms:.3f} ms, built-in {r.builtin_ms:.3f} ms,"
                        f" ratio {r.ratio:.2f} (of the minima: {r.min_ratio:.2f})")
    finally:
        torch.set_flush_denormal(False)
    if as_json:
        log(json.dumps({
            **where, "statistic": "median and min",
            "results": [dict(r.__dict__, ratio=r.ratio, min_ratio=r.min_ratio, ratio_fp32=r.ratio_fp32,
                             ours_gflops=r.ours_gflops, builtin_gflops=r.builtin_gflops) for r in results],
            "geomean": {f: geomean(r.ratio for r in results if r.family == f) for f in families},
            "geomean_min": {f: geomean(r.min_ratio for r in results if r.family == f) for f in families},
        }, indent=2))
    else:
        log(format_table(results))
    return results
