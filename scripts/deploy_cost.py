"""The cost of ``quantizer.deploy=int8`` and the agreement of its export, from a folder of runs.

    python scripts/deploy_cost.py results/deploy_int8   # run folders <q>_w<b>a<b>_<deploy>_e<epochs>[f<freeze_bn_epoch>]_s<seed>

Each run folder holds results.json (the student's test accuracy: for a deploy=int8 run, the integer
model's) and export/export.json (student_int8.onnx's agreement with the trained student and its test
accuracy on the full test set). Prints two markdown tables: per run, and int8 − none paired by seed
(mean ± SE of the paired difference, exact sign-flip p; daqkd.significance).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

from daqkd.significance import paired

NAME = re.compile(r"(?P<q>[a-z]+)_w(?P<w>\d+)a(?P<a>\d+)_(?P<deploy>int8|none)_e(?P<epochs>\d+)(?:f(?P<freeze>\d+))?_s(?P<seed>\d+)$")


def _read(folder: Path, name: str) -> dict | None:
    f = folder / name
    if f.is_file():
        return json.loads(f.read_text())
    pack = folder / "results.tar.gz"
    if pack.is_file():
        with tarfile.open(pack) as t:
            try:
                return json.loads(t.extractfile(name).read())
            except KeyError:
                return None
    return None


def rows(root: Path) -> list[dict]:
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        m = NAME.match(folder.name)
        result = _read(folder, "results.json")
        if not m or not result or result.get("status") != "ok":
            continue
        export = _read(folder, "export/export.json") or {}
        int8 = export.get("int8") or {}
        commit = (result.get("provenance") or {}).get("git_commit") or ""
        out.append({**m.groupdict(), "test_acc": 100 * result["student"]["test_acc"], "commit": commit,
                    "agreement": 100 * int8["agreement"] if "agreement" in int8 else None,
                    "int8_acc": 100 * int8["test_acc"] if "test_acc" in int8 else None, "check": int8.get("deploy_check")})
    return out


def label(r: dict) -> str:
    return "none" if r["deploy"] == "none" else f"int8 from epoch {r.get('freeze') or 0}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    runs = rows(args.folder)
    if not runs:
        print(f"no finished runs named <q>_w<b>a<b>_<deploy>_e<epochs>_s<seed> in {args.folder}", file=sys.stderr)
        return 2
    print("| run | student test acc | int8 agreement | int8 test acc | integers compared, ties, differing |")
    print("| --- | --- | --- | --- | --- |")
    for r in runs:
        check = r["check"]
        counts = f"{check['integers']:,}, {check['ties']}, {check['differ']}" if check else "–"
        fmt = (lambda v: f"{v:.2f} %" if v is not None else "–")
        print(f"| {r['q']} W{r['w']}A{r['a']} {label(r)}, {r['epochs']} ep, seed {r['seed']} | {fmt(r['test_acc'])} | {fmt(r['agreement'])} "
              f"| {fmt(r['int8_acc'])} | {counts} |")
    acc: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        acc[(r["q"], r["w"], r["a"], r["epochs"])][label(r)][int(r["seed"])] = r["test_acc"]
    print()
    print("| setting | deploy=int8 − none, test acc (pt) |")
    print("| --- | --- |")
    for (q, w, a, e), by in sorted(acc.items()):
        for name in sorted(k for k in by if k != "none"):
            if "none" in by:
                print(f"| {q} W{w}A{a}, {e} ep, {name} | {paired(by[name], by['none']).text(' pt')} |")
    print()
    print("commits:", ", ".join(sorted({r["commit"][:7] for r in runs if r["commit"]})) or "–")
    return 0


if __name__ == "__main__":
    sys.exit(main())
