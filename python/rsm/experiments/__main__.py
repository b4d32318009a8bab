"""python -m rsm.experiments list | <name> [--quick] [--out DIR] [--seed N]"""
from __future__ import annotations

import argparse
import json
import sys

from . import get, names, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsm.experiments",
                                     description="Run one of rsm's paper-reproduction experiments.")
    parser.add_argument("name", help="experiment name, or 'list'")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds), as in make test")
    parser.add_argument("--out", default=None, help="output folder (default results/<name>)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.name == "list":
        for name in names():
            print(f"{name:24s} {get(name).TITLE}")
        return 0
    try:
        summary = run(args.name, out=args.out, quick=args.quick, seed=args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
