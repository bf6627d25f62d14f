"""Where the time of one training step goes, op by op, for manual_ops and for the built-in.

    PYTHONPATH=. python3 benchmarks/profile_step.py [resnet18|vgg11] [--channels-last] [--bf16] [--steps N]

Runs the `train` benchmark's steps (manual_ops.bench.train_step) under torch.profiler after a
warm-up (with --bf16: under bfloat16 autocast) and prints, for each side, the self CPU time per step of the costliest ops.
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from manual_ops.bench import train_step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="resnet18", choices=train_step.MODELS)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="the step under bfloat16 autocast")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    fmt = "channels_last" if args.channels_last else "NCHW"
    case = next(c for c in train_step.cases(formats=(fmt,), dtype=torch.bfloat16 if args.bf16 else torch.float32) if c.name.startswith(args.model))
    torch.set_flush_denormal(True)
    for side in ("ours", "builtin"):
        fn = getattr(case, side)
        fn()
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                fn()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / args.steps / 1e3
        print(f"== {side}: {args.model} {'channels_last' if args.channels_last else 'NCHW'}, "
              f"{total:.0f} ms of self CPU time per step")
        rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]
        for e in rows:
            ms = e.self_cpu_time_total / args.steps / 1e3
            print(f"  {e.key:<48} {ms:8.1f} ms  {100 * ms / total:5.1f}%  calls/step {e.count // args.steps}")


if __name__ == "__main__":
    main()
