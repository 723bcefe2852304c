"""Run every benchmark: ``python -m bench [--quick]``. Each writes bench/results/<name>.json."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

# In the order a reader wants them: the transport baseline first.
BENCHMARKS = ("raw_mqtt", "offload_rtt", "local_infer", "microbatch", "serving_peers", "footprint", "compression",
              "own_model", "cascade", "workers", "fleet", "federated", "soak")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="pass --quick to each benchmark")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    for name in args.names or BENCHMARKS:
        start = time.monotonic()
        importlib.import_module(f"bench.{name}").main(["--quick"] if args.quick else [])
        print(f"bench {name}: {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
