"""The scoring figures: the DA scorer against the forward rate of the networks it runs, its share of
the default run, the bootstrap at many classes, scoring in rounds against scoring every image, and
the training loader against the QAT step."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from daqkd import build
from daqkd.bench.core import Setup, compose_cfg, figure, timed
from daqkd.metric.core import bootstrap_metric
from daqkd.metric.scoring import BOOTSTRAP, score_augmentations
from daqkd.torchutil import eval_mode


@figure("scoring", order=3, scoring_efficiency=("≥", 0.80),  # scoring against the networks' own forward rate
        scoring_share=("≤", 0.05), score_command_s=("≤", 60.0))  # of the default run; the score command's scoring
def scoring(bench: Setup) -> dict:
    m = bench.cfg.metric
    n = 200 if bench.quick else m.num_samples
    pool = list(bench.cfg.augment.pool)[: 2 if bench.quick else None]
    student = build.build_student(bench.cfg, copy.deepcopy(bench.teacher), bench.dm)
    networks = [bench.teacher, student]
    # The limit: both networks' eval forward on ready tensors of the same images.
    images = next(iter(bench.dm.augment_loader("minimal", n, n, m.seed)))[0]

    def forwards():
        with eval_mode(*networks), torch.no_grad():
            for chunk in images.split(m.batch_size):
                for net in networks:
                    F.softmax(net(chunk), 1)

    forward_s = timed(forwards, 1 if bench.quick else 3)
    start = time.perf_counter()
    scores = score_augmentations(bench.teacher, bench.dm, pool, n, m.batch_size, m.seed, "cpu", student)
    pool_s = time.perf_counter() - start
    per = {}
    for s in scores:
        limit_s = 2 * forward_s  # two passes
        per[s.name] = {"seconds": s.seconds, "images_per_s": 2 * n / s.seconds, "limit_images_per_s": 2 * n / limit_s,
                       "efficiency": limit_s / s.seconds}
    pool_limit = 2 * forward_s * len(pool)
    bench.check(f"DA scoring, pool of {len(pool)} at {n} images", pool_s, pool_limit, pool_limit / pool_s, "scoring_efficiency", "s")
    for name, d in per.items():
        bench.check(f"DA scoring, {name}", d["images_per_s"], d["limit_images_per_s"], d["efficiency"], "scoring_efficiency", "img/s")
    # The default run: 2 epochs of the 15k subset, the teacher from the cache.
    steps = 2 * (len(bench.dm.train_idx) // bench.dm.batch_size)
    run_s = pool_s + steps * bench.step_time
    share = pool_s / run_s
    bench.check("DA scoring, share of the default run (estimated)", pool_s, run_s, share, "scoring_share", "s")
    if not bench.quick:
        bench.check("python -m daqkd.score, 7 DAs at 2000 images (the scoring part)", pool_s, 60.0, pool_s / 60.0, "score_command_s", "s",
                   compared=pool_s)
    return {"images": n, "pool": pool, "pool_seconds": pool_s, "pool_limit_seconds": pool_limit, "per_candidate": per,
            "share_of_default_run": share, "default_run_seconds_estimated": run_s,
            "ranking": [s.name for s in sorted(scores, key=lambda s: s.m)]}


@figure("scoring.bootstrap", order=4)
def bootstrap(bench: Setup) -> dict:
    """The scorer's bootstrap standard errors at many classes (Tiny-ImageNet: 200): hard labels go
    class by class; the general path (soft labels, CutMix) is the limit it is compared with."""
    n, c = (400, 200) if bench.quick else (2000, 200)
    gen = torch.Generator().manual_seed(0)
    p1, p2 = (F.softmax(3 * torch.randn(n, c, generator=gen), 1) for _ in range(2))
    hard = F.one_hot(torch.arange(n) % c, c).double()
    soft = 0.999 * hard + 0.001 / c  # the same shapes, not one-hot
    weights = torch.ones(BOOTSTRAP, n, dtype=torch.float64)
    times = {name: timed(lambda t=t: bootstrap_metric(p1, t, p2, t, weights), 1 if bench.quick else 2)
             for name, t in (("hard", hard), ("general", soft))}
    speedup = times["general"] / times["hard"]
    bench.row(f"DA metric bootstrap, {c} classes × {n} images, hard labels vs general", times["hard"], times["general"],
             speedup, "faster", speedup > 1, "s")
    return {"classes": c, "images": n, "hard_seconds": times["hard"], "general_seconds": times["general"], "speedup": speedup}


@figure("pipeline", order=6, pipeline_vs_step=("≥", 2.0))
def pipeline(bench: Setup) -> dict:
    out = {}
    step_rate = bench.dm.batch_size / bench.step_time
    batches = 3 if bench.quick else 20
    for name in list(bench.cfg.augment.pool)[: 2 if bench.quick else None]:
        loader = bench.dm.train_loader(name)
        it = iter(loader)
        next(it)  # worker start-up, then steady state
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        rate = batches * bench.dm.batch_size / (time.perf_counter() - start)
        del it, loader
        ratio = rate / step_rate
        out[name] = {"images_per_s": rate, "qat_step_images_per_s": step_rate, "ratio": ratio}
        exempt = name == "augmix"
        if exempt:
            bench.row(f"data pipeline, {name}", rate, step_rate, ratio, "—", None, "img/s")
        else:
            bench.check(f"data pipeline, {name}", rate, step_rate, ratio, "pipeline_vs_step", "img/s")
    return out


@figure("adaptive_scoring", order=8, rounds_share_of_fit=("≤", 0.10))
def adaptive_scoring(bench: Setup) -> dict:
    """augment=auto's scoring in rounds against scoring every image: the seconds (and their share
    of the default run's fit), and whether the pick is the same, for seeds 0–4 (1 with --quick), the
    paper and the reference16 pools, on Fashion-MNIST with the cached teacher, and on small
    CIFAR-format and ImageFolder sets (random images, as the tests write them) with a random teacher."""
    import tempfile

    from daqkd.metric.select import decide, pruner, rule_from_config

    m = bench.cfg.metric
    rule, epochs = rule_from_config(m), bench.cfg.trainer.max_epochs
    seeds = [0] if bench.quick else [0, 1, 2, 3, 4]
    out: dict = {"cases": []}
    same = total = 0
    seconds = {"full": 0.0, "rounds": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        datasets = [("fashion_mnist", bench.dm, bench.teacher)] + ([] if bench.quick else synthetic_datasets(bench, Path(tmp)))
        for data, dm, teacher in datasets:
            for pool in ("paper",) if bench.quick else ("paper", "reference16"):
                names = list(compose_cfg([*bench.overrides, f"pool={pool}"]).augment.pool)
                n = min(m.num_samples or 2000, 200 if bench.quick else (500 if data != "fashion_mnist" else 2000))
                for seed in seeds:
                    t0 = time.perf_counter()
                    full = score_augmentations(teacher, dm, names, n, m.batch_size, seed)
                    t1 = time.perf_counter()
                    rounds = score_augmentations(teacher, dm, names, n, m.batch_size, seed, chunk=m.chunk,
                                                 prune=pruner(rule, epochs, m.stop_z))
                    t2 = time.perf_counter()
                    a, b = decide(full, rule, epochs).selected, decide(rounds, rule, epochs).selected
                    same, total = same + (a == b), total + 1
                    if data == "fashion_mnist" and pool == "paper":
                        seconds["full"] += t1 - t0
                        seconds["rounds"] += t2 - t1
                    out["cases"].append({"data": data, "pool": pool, "seed": seed, "images": n, "full_pick": a, "rounds_pick": b,
                                         "full_s": t1 - t0, "rounds_s": t2 - t1,
                                         "images_used": {s.name: s.num_samples for s in rounds}})
    bench.row(f"augment=auto scoring in rounds: same pick as every image ({total} cases)", same, total, same / total, "all",
             same == total, "cases")
    k = len(seeds)
    full_s, rounds_s = seconds["full"] / k, seconds["rounds"] / k
    steps = bench.cfg.trainer.max_epochs * (len(bench.dm.train_idx) // bench.dm.batch_size)
    fit_s = steps * bench.step_time
    bench.row("augment=auto scoring in rounds vs every image (Fashion-MNIST, paper pool, teacher only)", rounds_s, full_s,
             rounds_s / full_s, "faster", rounds_s < full_s, "s")
    bench.check("augment=auto scoring in rounds, share of the default run's fit (estimated)", rounds_s, fit_s, rounds_s / fit_s,
               "rounds_share_of_fit", "s")
    out.update(same=same, total=total, full_seconds=full_s, rounds_seconds=rounds_s, fit_seconds_estimated=fit_s)
    return out


def synthetic_datasets(bench: Setup, root: Path) -> list:
    """Small CIFAR-10-format and ImageFolder sets of random images, each with a random teacher."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    import pickle

    for j, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = torch.randint(0, 256, (120, 3072), generator=rng, dtype=torch.uint8).numpy()
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": [(j * 120 + i) % 10 for i in range(120)]}, fh)
    for c in range(4):
        for k in range(40):
            (root / "imgs" / "train" / f"c{c}").mkdir(parents=True, exist_ok=True)
            arr = torch.randint(0, 256, (24, 24, 3), generator=rng, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(root / "imgs" / "train" / f"c{c}" / f"{k}.png")
    out = []
    for data, over in (("cifar10", ["dataset=cifar10", f"paths.data_dir={root}", "dataset.datamodule.val_size=60"]),
                       ("imagefolder", ["dataset=imagefolder", "dataset.num_classes=4", "dataset.image_size=24",
                                        f"dataset.datamodule.source_options.folder={root / 'imgs'}"])):
        cfg = compose_cfg([*bench.overrides, *over, "dataset.datamodule.num_workers=0", "dataset.datamodule.train_subset=null"])
        dm = build.build_datamodule(cfg)
        dm.setup()
        torch.manual_seed(0)
        out.append((data, dm, build.build_model(cfg).eval()))
    return out


