"""Does augment=auto's scoring in rounds pick what scoring every image picks, at a given budget?
For each teacher seed (each seed's cached teacher of the experiment), pool and metric seed, score the
pool both ways and decide with the shipped rule at the planned epochs (so at ≥ metric.long_epochs the
M branch decides); writes every case and the count of agreements as JSON.

    python scripts/same_pick_rounds.py --out results/budget_fashion_mnist_long/same_pick_e256.json \\
        --seeds 0,1,2,3,4,5,6,7 --pools paper,reference16 --metric-seeds 0,1 -- \\
        experiment=budget_fashion_mnist_long trainer.max_epochs=256

Teachers not in the cache (DAQKD_CACHE) are trained first, as a run would.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L

from daqkd import build
from daqkd.config import compose_config
from daqkd.metric.scoring import score_augmentations
from daqkd.metric.select import decide, pruner, rule_from_config
from daqkd.provenance import provenance
from daqkd.torchutil import set_threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--pools", type=lambda s: s.split(","), default=["paper", "reference16"])
    ap.add_argument("--metric-seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0],
                    help="offsets added to the teacher seed for metric.seed (which images, which resamples)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cases, same = [], 0
    for seed in args.seeds:
        for pool in args.pools:
            cfg = compose_config([*args.overrides, f"seed={seed}", f"pool={pool}"])
            set_threads(cfg.speed.get("threads", "auto"), 0)
            L.seed_everything(seed)
            dm = build.build_datamodule(cfg)
            dm.setup()
            teacher = build.build_teacher(cfg, dm).model
            m, epochs = cfg.metric, cfg.trainer.max_epochs
            rule = rule_from_config(m)
            names = list(cfg.augment.pool)
            for offset in args.metric_seeds:
                ms = seed + 1000 * offset
                t0 = time.perf_counter()
                full = score_augmentations(teacher, dm, names, m.num_samples, m.batch_size, ms)
                t1 = time.perf_counter()
                rounds = score_augmentations(teacher, dm, names, m.num_samples, m.batch_size, ms, chunk=m.chunk,
                                             prune=pruner(rule, epochs, m.stop_z))
                t2 = time.perf_counter()
                a, b = decide(full, rule, epochs), decide(rounds, rule, epochs)
                same += a.selected == b.selected
                cases.append({"seed": seed, "pool": pool, "metric_seed": ms, "selector": a.selector, "full_pick": a.selected,
                              "rounds_pick": b.selected, "full_how": a.how, "rounds_how": b.how, "full_s": t1 - t0, "rounds_s": t2 - t1,
                              "images_used": {s.name: s.num_samples for s in rounds}})
                print(f"seed {seed} {pool} metric seed {ms}: every image → {a.selected}, rounds → {b.selected} "
                      f"({t1 - t0:.1f} s vs {t2 - t1:.1f} s)", flush=True)
    out = {"same": same, "cases": len(cases), "overrides": args.overrides, "provenance": provenance(), "details": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"same pick in {same} of {len(cases)} cases; written to {args.out}")
    return 0 if same == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
