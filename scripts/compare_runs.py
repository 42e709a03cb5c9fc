"""Compare two folders of runs written by scripts/behaviour_check.sh: every number and string of each
results.json (times, paths, versions and memory left out) and every augment_scores.csv but its
seconds column.

    python scripts/compare_runs.py /tmp/beh/<before> /tmp/beh/<after>
"""
import csv
import json
import math
import sys
from pathlib import Path

SKIP = ("time", "seconds", "path", "dir", "ckpt", "version", "host", "date", "commit", "python", "torch", "started", "finished",
        "elapsed", "duration", "peak", "rss", "_s", "provenance", "cache", "output", "git", "argv", "command", "mb", "memory", "wall")


def leaves(o, p=""):
    if isinstance(o, dict):
        for k, v in o.items():
            yield from leaves(v, f"{p}.{k}" if p else k)
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from leaves(v, f"{p}[{i}]")
    else:
        yield p, o


def load(folder: Path) -> dict:
    return {k: v for k, v in leaves(json.loads((folder / "results.json").read_text()))
            if not any(s in k.lower() for s in SKIP) and (v is None or isinstance(v, (int, float, str, bool)))}


def same(x, y) -> bool:
    return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))


def main(a: Path, b: Path) -> int:
    runs = sorted(p.name for p in a.iterdir() if (p / "results.json").exists())
    identical = 0
    for run in runs:
        if not (b / run / "results.json").exists():
            print(f"{run}: missing in {b}")
            continue
        ra, rb = load(a / run), load(b / run)
        common = set(ra) & set(rb)
        diff = sorted(k for k in common if not same(ra[k], rb[k]))
        identical += not diff
        print(f"{run:18s} {len(common)} values compared, {len(diff)} differ" + (f": {diff[:3]}" if diff else ""))
    tables = [r for r in runs if (a / r / "augment_scores.csv").exists()]
    equal = sum([{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader((a / r / "augment_scores.csv").open())]
                == [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader((b / r / "augment_scores.csv").open())]
                for r in tables if (b / r / "augment_scores.csv").exists())
    print(f"{identical}/{len(runs)} runs identical; augment_scores.csv: {equal}/{len(tables)} identical but for the seconds column")
    return 0 if identical == len(runs) and equal == len(tables) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
