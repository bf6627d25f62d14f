"""Training steps of the converted small ResNet with DistributedDataParallel: steps/s and time communicating.

Run alone (one process) or under torchrun::

    python -m manual_ops.bench.ddp [--sync-bn]
    torchrun --standalone --nproc-per-node=2 -m manual_ops.bench.ddp [--sync-bn]

The global batch (``--batch``) is split over the processes. Rank 0 prints one JSON line: steps/s,
images/s, the median step time, and per step the time blocked in SyncBatchNorm's collectives
(on the critical path, including any wait for a slower rank) and the time DDP's gradient
all-reduces were in flight (they overlap the backward); then the time of one layer's pair of
SyncBatchNorm collectives with the ranks aligned by a barrier (the communication alone). Timed with ``time.perf_counter`` around every step after a warm-up.
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

from ..convert import convert
from ..models import build
from ..ops import sync_batch_norm


class _Timed:
    """Adds the seconds spent in ``fn`` to ``self.seconds``."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m manual_ops.bench.ddp", description=__doc__)
    parser.add_argument("--sync-bn", action="store_true", help="manual_ops' SyncBatchNorm instead of BatchNorm2d")
    parser.add_argument("--batch", type=int, default=64, help="global batch (split over the processes)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    originals = dist.all_gather, dist.all_reduce
    try:
        torch.manual_seed(0)
        model = convert(build("resnet-small", 3, 10, 32), sync_bn=args.sync_bn)
        in_flight = [0.0]
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model)
            def timed_all_reduce(state, bucket):
                t0 = time.perf_counter()

                def done(fut):
                    in_flight[0] += time.perf_counter() - t0
                    return fut.value()[0].div_(world)
                return originals[1](bucket.buffer(), async_op=True).get_future().then(done)
            model.register_comm_hook(None, timed_all_reduce)
        # SyncBatchNorm's collectives, timed where its module looks them up (torch.distributed; restored below).
        gather, all_reduce = _Timed(dist.all_gather), _Timed(dist.all_reduce)
        sync_batch_norm.dist.all_gather, sync_batch_norm.dist.all_reduce = gather, all_reduce

        per = args.batch // world
        x, y = torch.randn(per, 3, 32, 32), torch.randint(0, 10, (per,))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        times, blocked, flying = [], [], []
        for step in range(args.warmup + args.steps):
            b0, f0 = gather.seconds + all_reduce.seconds, in_flight[0]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
                blocked.append(gather.seconds + all_reduce.seconds - b0)
                flying.append(in_flight[0] - f0)
        # One layer's pair of collectives (all_gather of 2C + 1, all_reduce of 2C float64 numbers, C = 64) with
        # the ranks lined up by a barrier first: the cost of the communication itself, without waiting for a
        # slower rank.
        pair = []
        for _ in range(30 if world > 1 else 0):
            dist.barrier()
            t0 = time.perf_counter()
            originals[0]([torch.empty(129, dtype=torch.float64) for _ in range(world)],
                         torch.zeros(129, dtype=torch.float64))
            originals[1](torch.zeros(2, 64, dtype=torch.float64))
            pair.append(time.perf_counter() - t0)
        if rank == 0:
            step_s = statistics.median(times)
            print(json.dumps({
                "processes": world, "threads_each": torch.get_num_threads(), "sync_bn": args.sync_bn,
                "global_batch": args.batch, "steps_per_s": round(1 / step_s, 3),
                "images_per_s": round(args.batch / step_s, 1), "step_ms": round(1e3 * step_s, 1),
                "syncbn_collectives_ms": round(1e3 * statistics.median(blocked), 2),
                "ddp_allreduce_in_flight_ms": round(1e3 * statistics.median(flying), 2),
                "batch_norm_layers": sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()),
                "collective_pair_ms": round(1e3 * statistics.median(pair), 3) if pair else 0.0}))
    finally:
        sync_batch_norm.dist.all_gather, sync_batch_norm.dist.all_reduce = originals
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
