"""Command line: ``python -m manual_ops {bench,demo,train} ...``."""
import argparse
import sys

# The modules of the `train` extra (setup.py), which the rest of the package does not need.
TRAIN_EXTRAS = ("numpy", "tqdm", "matplotlib", "sklearn")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manual_ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time ours against the built-ins, side by side")
    bench.add_argument("families", nargs="*", help="which op families (default: all)")
    bench.add_argument("--reps", type=int, default=15, help="interleaved repetitions per case (median and min reported)")
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.add_parser("demo", help="compare our gradients with the built-ins on real-sized layers")
    from .train import __doc__ as train_doc, add_arguments
    train = sub.add_parser("train", help="train a network with built-in and with manual_ops layers, side by side",
                           description=train_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(train)
    args = parser.parse_args(argv)

    if args.command == "bench":
        from .bench import FAMILIES, run
        unknown = [f for f in args.families if f not in FAMILIES]
        if unknown:
            parser.error(f"unknown benchmark family {unknown}; choose from {sorted(FAMILIES)}")
        run(args.families, reps=args.reps, warmup=args.warmup, as_json=args.json)
    elif args.command == "demo":
        from .demo import main as demo
        return demo()
    elif args.command == "train":
        from .train import CHECKPOINT, UsageError, train as run_training
        try:
            run_training(args)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in TRAIN_EXTRAS:
                raise
            print(f"error: the train command needs {e.name}, one of its extras: pip install 'manual_ops[train]'",
                  file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"\ninterrupted; the last checkpoint ({args.out}/{CHECKPOINT}) is intact: continue with --resume",
                  file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
