"""Command line: `python -m rsm demo` (the 2D flow demo), `python -m rsm info` (build info)."""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def _demo(args: argparse.Namespace) -> int:
    import rsm
    from rsm import datasets, metrics

    info = rsm.build_info()
    print(f"rsm {rsm.__version__} | BLAS: {info.get('blas')} | OpenMP threads: {info.get('num_threads')}")
    out_dir = args.out
    os.makedirs(out_dir, exist_ok=True)

    data = datasets.get("8gaussians")
    train = data.sample(args.train_size, seed=args.seed)
    heldout = data.sample(args.eval_size, seed=args.seed + 1)
    path = rsm.FlowPath()
    model = rsm.MLP(2, hidden=256, depth=3, seed=args.seed)
    print(f"\n[1/3] pretraining {model} on 8 gaussians by flow matching "
          f"({args.steps} steps, batch {args.batch_size})")
    t0 = time.perf_counter()
    history = rsm.pretrain(model, train, path, steps=args.steps, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed, warmup_steps=100, lr_schedule="cosine",
                           progress=not args.quiet)
    train_seconds = time.perf_counter() - t0
    losses = history.column("loss")
    print(f"      {train_seconds:.1f} s, loss {losses[:50].mean():.3f} -> {losses[-200:].mean():.3f}")

    print(f"\n[2/3] sampling {args.eval_size} points with the ODE (Heun) and the SDE (Flow-GRPO, a=0.7)")
    samples, rows = {}, []
    for label, sampler, steps in (("ODE (Heun, 25 steps)", "heun", 25), ("SDE (a=0.7, 50 steps)", "sde", 50)):
        t0 = time.perf_counter()
        traj = rsm.sample(model, args.eval_size, path, sampler, steps=steps, seed=args.seed + 2,
                          return_trajectory=True)
        seconds = time.perf_counter() - t0
        x = traj.x
        samples[label] = x
        summary = metrics.summarize(x, data, heldout)
        rows.append((label, summary, traj.nfe, seconds))
    reference = metrics.summarize(data.sample(args.eval_size, seed=args.seed + 3), data, heldout)
    rows.append(("exact samples (reference)", reference, 0, 0.0))

    print()
    print(f"| {'samples':<26} | energy dist. | MMD^2    | modes | mode-weight TV | NFE    | seconds |")
    print(f"|{'-' * 28}|{'-' * 14}|{'-' * 10}|{'-' * 7}|{'-' * 16}|{'-' * 8}|{'-' * 9}|")
    for label, s, nfe, seconds in rows:
        cov = s.get("mode_coverage", {})
        modes = f"{cov.get('covered', '?')}/{cov.get('total', '?')}"
        print(f"| {label:<26} | {s['energy_distance']:12.4f} | {s['mmd']:8.5f} | {modes:>5} | "
              f"{s.get('mode_weights_tv', float('nan')):14.3f} | {nfe:6d} | {seconds:7.2f} |")

    print("\n[3/3] plots")
    try:
        from rsm import plot

        png = os.path.join(out_dir, "samples.png")
        plot.scatter_compare({"data (held out)": heldout, **samples}, png,
                             title="rsm demo: 2D flow model on 8 gaussians", lim=3.5)
        loss_png = os.path.join(out_dir, "pretrain_loss.png")
        plot.history(history, ["loss"], loss_png)
        print(f"      wrote {png} and {loss_png}")
    except ImportError as exc:
        print(f"      skipped plots ({exc})")
    model_path = os.path.join(out_dir, "flow_8gaussians.safetensors")
    model.save(model_path)
    print(f"      saved the model to {model_path} (rsm.load reads it back)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsm", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="pretrain and sample a 2D flow model (the default demo)")
    demo.add_argument("--steps", type=int, default=2500)
    demo.add_argument("--batch-size", type=int, default=256)
    demo.add_argument("--lr", type=float, default=2e-3)
    demo.add_argument("--train-size", type=int, default=50_000)
    demo.add_argument("--eval-size", type=int, default=4000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="results/demo")
    demo.add_argument("--quiet", action="store_true")
    sub.add_parser("info", help="print what this build found")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "info" or args.command is None:
        import pprint

        import rsm

        pprint.pprint(rsm.build_info())
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
