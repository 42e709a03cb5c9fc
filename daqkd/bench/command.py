"""``python -m daqkd.bench`` / ``daqkd bench``: runs every figure of the library (daqkd.bench.core,
.training, .scoring) in order, prints the table and writes bench.json."""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import daqkd.bench.scoring  # noqa: F401 (registers its figures)
import daqkd.bench.training  # noqa: F401
from daqkd.bench.core import FIGURES, Figure, Setup
from daqkd.config import check_command_line
from daqkd.errors import reported_as_one_line
from daqkd.io import atomic_write_json


def figures() -> list[Figure]:
    """Every registered figure, in the order they run."""
    return sorted(FIGURES, key=lambda f: f.order)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daqkd.bench", description="daqkd speed figures, as ratios to limits",
                                 epilog="Any other argument is a config override (key=value) of the configuration measured, "
                                        "e.g. python -m daqkd.bench --quick quantizer=lsq bits=4")
    ap.add_argument("--out", default="bench/bench.json")
    ap.add_argument("--quick", action="store_true", help="few repeats, small sizes, the configured quantizer and KD only (a smoke run)")
    ap.add_argument("--run", default=None, help="a run's results.json, for the default run's peak memory and stage times")
    args, overrides = ap.parse_known_args(argv)
    unknown = [a for a in overrides if a.startswith("-")]
    if unknown:
        ap.error(f"unrecognized arguments: {' '.join(unknown)} (config overrides look like key=value)")
    start = time.perf_counter()
    with reported_as_one_line():
        check_command_line(overrides)  # a bad override is one line, as for python -m daqkd.run
        bench = Setup(overrides, args.quick, args.run)  # validates the config it composes
    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine()},
        "overrides": overrides,
        "teacher": bench.teacher_source,
    }
    for fig in figures():
        *parents, last = fig.key.split(".")
        place = result
        for p in parents:
            place = place[p]
        bench.figure = fig
        t = time.perf_counter()
        place[last] = fig.measure(bench)
        result.setdefault("figure_seconds", {})[fig.key] = time.perf_counter() - t
    if args.run:
        import json

        result["run_seconds"] = json.loads(Path(args.run).read_text()).get("seconds")
    result["seconds"] = time.perf_counter() - start
    result["table"] = bench.rows
    out = Path(args.out)
    atomic_write_json(out, result)
    print(bench.table())
    print(f"\n{result['seconds']:.0f} s; teacher: {bench.teacher_source}; written to {out}")
    return 0
