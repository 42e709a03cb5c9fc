"""Scoring candidate DAs with a frozen teacher (and, optionally, the calibrated student): two passes
over the same images per candidate give every selector at once (plain torch, no Lightning).

Selectors, each "lower is predicted better" (SELECTORS):
    m            M = DEV − CMI (Kur & Zhao; docs/METHOD.md §1), the default
    variance     the baseline of Wang et al. (docs/METHOD.md §1): std across groups of 5 outputs
    cmi          −CMI alone
    ce_cmi       CE − CMI, the reference code's score: the teacher's mean cross-entropy on the
                 augmented images (pass 2) minus CMI (docs/METHOD.md §1)
    dev          DEV alone
    entropy      the teacher's mean entropy on the augmented images
    teacher_acc  −(the teacher's top-1 accuracy on the augmented images)
    student_m    M computed with the calibrated low-bit student instead of the teacher
Each score carries a standard error: a bootstrap over images (M, DEV, CMI, student M), over groups
(variance), or the standard error of a mean (entropy, accuracy). Candidates scored on the same
images share their bootstrap replicates (the same resampled images in each), so the standard error
of the *difference* between two candidates is the spread of their replicates' differences
(``paired_se``): the images' own difficulty, common to both, cancels, and that standard error is
usually smaller than the independent √(se₁² + se₂²).
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from daqkd.metric.core import EPS, bootstrap_metric, entropy, metric_score, soft_targets, variance_groups
from daqkd.registry import SELECTORS
from daqkd.torchutil import eval_mode, hard_labels

log = logging.getLogger(__name__)

BOOTSTRAP = 200  # resamples behind each standard error


@dataclass
class AugmentScore:
    """One candidate's record: every selector's raw quantity with its standard error (``*_se``),
    the teacher's CE, the number of images and the seconds taken."""

    name: str
    m: float
    dev: float
    cmi: float
    variance: float
    entropy: float
    teacher_acc: float
    teacher_ce: float
    num_samples: int
    seconds: float
    m_se: float = math.nan
    dev_se: float = math.nan
    cmi_se: float = math.nan
    variance_se: float = math.nan
    entropy_se: float = math.nan
    teacher_acc_se: float = math.nan
    student_m: float = math.nan  # NaN when no student was scored
    student_m_se: float = math.nan
    # The reference code's score CE₂ − CMI (CE₂: the teacher's mean cross-entropy on pass 2, the pass
    # CMI is measured on). Defaults keep results.json files written before it was added loadable.
    ce_cmi: float = math.nan
    ce_cmi_se: float = math.nan
    bootstrap_replicates: int = 0  # replicates behind the standard errors (0: not recorded, an older file)
    # The standard error of (this − other) for each record field with replicates, for every other
    # candidate scored on the same images: {field: {other name: se}} (empty in older files).
    paired_se: dict[str, dict[str, float]] = field(default_factory=dict)
    # The bootstrap replicates behind the standard errors, {field: [B]}, and what they were drawn
    # from (seed, images' classes): kept in memory while scoring, never written.
    replicates: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    replicate_key: tuple | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("replicates", "replicate_key", "paired_se")}
        out["paired_se"] = {k: dict(v) for k, v in self.paired_se.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> AugmentScore:
        known = {f.name for f in fields(cls)} - {"replicates", "replicate_key"}
        return cls(**{k: v for k, v in d.items() if k in known})


# Each selector: the value it minimises, and the record's field whose ``_se`` is its standard error
# (daqkd.registry.SELECTORS; list_selectors() lists them).
SELECTORS.add("m", lambda s: s.m, field="m")
SELECTORS.add("variance", lambda s: s.variance, field="variance")
SELECTORS.add("cmi", lambda s: -s.cmi, field="cmi")
SELECTORS.add("ce_cmi", lambda s: s.ce_cmi, field="ce_cmi")
SELECTORS.add("dev", lambda s: s.dev, field="dev")
SELECTORS.add("entropy", lambda s: s.entropy, field="entropy")
SELECTORS.add("teacher_acc", lambda s: -s.teacher_acc, field="teacher_acc")
SELECTORS.add("student_m", lambda s: s.student_m, field="student_m")


def selector_value(score: AugmentScore, selector: str) -> float:
    """The value ``selector`` minimises for this candidate (lower is predicted better)."""
    return SELECTORS.get(selector)(score)


def selector_se(score: AugmentScore, selector: str) -> float:
    """The standard error of the record field the selector names (``field=``); NaN for a selector
    registered without one, whose candidates then never count as tied."""
    name = SELECTORS.meta(selector).get("field")
    return getattr(score, name + "_se") if name else float("nan")


def difference_se(a: AugmentScore, b: AugmentScore, selector: str) -> float:
    """The standard error of the difference of two candidates' ``selector`` values: paired (the
    spread of their shared bootstrap replicates' differences) when both were scored on the same
    images, else √(se_a² + se_b²) as if independent (records written before paired standard errors);
    NaN for a selector without a standard error."""
    name = SELECTORS.meta(selector).get("field")
    if not name:
        return math.nan
    paired = a.paired_se.get(name, {}).get(b.name)
    if paired is None:
        paired = b.paired_se.get(name, {}).get(a.name)
    if paired is not None and a.num_samples == b.num_samples:
        return float(paired)
    return math.sqrt(_zero_nan(getattr(a, name + "_se")) ** 2 + _zero_nan(getattr(b, name + "_se")) ** 2)


def _zero_nan(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def pair_standard_errors(scores: Sequence[AugmentScore]) -> None:
    """Fill ``paired_se`` of every pair of ``scores`` whose replicates were drawn alike (same images,
    same seed), from the replicates' differences; pairs that were not are left without one."""
    for a in scores:
        for b in scores:
            if a is b or a.replicate_key is None or a.replicate_key != b.replicate_key:
                continue
            for name in a.replicates.keys() & b.replicates.keys():
                a.paired_se.setdefault(name, {})[b.name] = _std(a.replicates[name] - b.replicates[name])


@dataclass
class Passes:
    """Two passes over the same N images: softmax outputs [N, C] and (soft) targets [N, C] of each."""

    p1: torch.Tensor
    t1: torch.Tensor
    p2: torch.Tensor
    t2: torch.Tensor


class PassRecorder:
    """Collects, batch by batch, every network's softmax outputs and the (soft) targets of the two
    passes over one candidate's images."""

    def __init__(self, networks: Sequence[nn.Module], num_classes: int, device):
        self.networks, self.num_classes, self.device = list(networks), num_classes, device
        self.outs = [[[], []] for _ in self.networks]
        self.targets: list[list[torch.Tensor]] = [[], []]
        self.start = time.perf_counter()

    @torch.no_grad()
    def add(self, p: int, images: torch.Tensor, labels: torch.Tensor) -> None:
        x = images.to(self.device, non_blocking=True)
        for j, net in enumerate(self.networks):
            self.outs[j][p].append(F.softmax(net(x).float(), dim=1).cpu())
        self.targets[p].append(soft_targets(labels, self.num_classes, torch.float32))

    def passes(self) -> list[Passes]:
        t1, t2 = torch.cat(self.targets[0]), torch.cat(self.targets[1])
        if len(t1) != len(t2):
            raise ValueError("the two metric passes saw different numbers of images; the loader must not drop or reshuffle")
        return [Passes(torch.cat(o[0]), t1, torch.cat(o[1]), t2) for o in self.outs]

    def score(self, name: str, seed: int, classes: torch.Tensor | None = None) -> AugmentScore:
        passes = self.passes()
        return score_passes(name, passes[0], passes[1] if len(passes) > 1 else None, time.perf_counter() - self.start, seed=seed,
                            classes=classes)


def two_passes(networks: Sequence[nn.Module], loader: Iterable, num_classes: int, device="cpu") -> list[Passes]:
    """Run every network in eval mode over two iterations of ``loader`` (two draws of each image's
    augmentation) and keep their softmax outputs: the data pipeline runs once for all networks."""
    rec = PassRecorder(networks, num_classes, device)
    with eval_mode(*networks):
        for p in range(2):
            for images, labels in loader:
                rec.add(p, images, labels)
    return rec.passes()


def _bootstrap_weights(classes: torch.Tensor, seed: int, draws: int = BOOTSTRAP) -> torch.Tensor:
    """Resampling counts [draws, n] of n images, fixed by ``seed``, drawn within each class as the
    subsample was drawn: every replicate keeps each class's image count, so none lacks a prototype."""
    gen = torch.Generator().manual_seed(seed)
    n = len(classes)
    weights = torch.zeros(draws, n, dtype=torch.float64)
    for c in torch.unique(classes):
        members = torch.nonzero(classes == c).flatten()
        idx = members[torch.randint(0, len(members), (draws, len(members)), generator=gen)]
        weights.scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64))
    return weights


def image_classes(passes: Passes) -> torch.Tensor:
    """Each image's class, for stratifying the bootstrap when the true labels are not given: the
    hard label, or with soft labels (CutMix) the class with the most weight over both passes."""
    return hard_labels(passes.t1 + passes.t2)


def _std(values: torch.Tensor) -> float:
    ok = values[torch.isfinite(values)]
    return float(ok.std()) if len(ok) > 1 else math.nan


def score_passes(name: str, teacher: Passes, student: Passes | None = None, seconds: float = 0.0,
                 group_size: int = 5, seed: int = 0, classes: torch.Tensor | None = None) -> AugmentScore:
    """Every selector for one candidate, from the teacher's (and the student's) two passes.
    ``classes`` [N] are the images' true classes (the bootstrap's strata); default ``image_classes``."""
    m = metric_score(teacher.p1, teacher.p2, teacher.t1, teacher.t2, teacher.t1.shape[1])
    n = len(teacher.p1)
    weights = _bootstrap_weights(image_classes(teacher) if classes is None else classes, seed)
    boot = bootstrap_metric(teacher.p1, teacher.t1, teacher.p2, teacher.t2, weights)
    probs = torch.cat([teacher.p1, teacher.p2]).to(torch.float64)
    targets = torch.cat([teacher.t1, teacher.t2]).to(torch.float64)
    # Per image, averaged over its two draws: the unit the standard errors count.
    h = entropy(probs).view(2, n).mean(0)
    correct = (probs.argmax(1) == hard_labels(targets)).double().view(2, n).mean(0)
    per_image_mean = lambda v: (weights @ v) / weights.sum(1)  # noqa: E731  (a replicate's mean over its images)
    ce = -(targets * probs.clamp_min(EPS).log()).sum(1).mean()
    # The reference code's CE − CMI: CE over pass 2's images, the replicates weighted like CMI's.
    ce2 = -(teacher.t2.to(torch.float64) * teacher.p2.to(torch.float64).clamp_min(EPS).log()).sum(1)
    ce2_boot = (weights @ ce2) / weights.sum(1)
    groups = variance_groups(probs, group_size)
    g_idx = torch.randint(0, len(groups), (BOOTSTRAP, len(groups)), generator=torch.Generator().manual_seed(seed + 1))
    variance_boot = groups[g_idx].std(1).mean(-1)
    score = AugmentScore(
        name=name, m=m["m"], dev=m["dev"], cmi=m["cmi"],
        variance=float(groups.std(0).mean()), entropy=float(h.mean()), teacher_acc=float(correct.mean()),
        teacher_ce=float(ce), num_samples=n, seconds=seconds,
        m_se=_std(boot["m"]), dev_se=_std(boot["dev"]), cmi_se=_std(boot["cmi"]), variance_se=_std(variance_boot),
        entropy_se=float(h.std() / math.sqrt(n)), teacher_acc_se=float(correct.std() / math.sqrt(n)),
        ce_cmi=float(ce2.mean()) - m["cmi"], ce_cmi_se=_std(ce2_boot - boot["cmi"]),
        bootstrap_replicates=int(torch.isfinite(boot["m"]).sum()),
    )
    score.replicates = {"m": boot["m"], "dev": boot["dev"], "cmi": boot["cmi"], "ce_cmi": ce2_boot - boot["cmi"],
                        "variance": variance_boot, "entropy": per_image_mean(h), "teacher_acc": per_image_mean(correct)}
    score.replicate_key = (seed, hashlib.sha256(weights.numpy().tobytes()).hexdigest())  # alike draws: the same resampled images
    if student is not None:
        score.student_m = metric_score(student.p1, student.p2, student.t1, student.t2, student.t1.shape[1])["m"]
        score.replicates["student_m"] = bootstrap_metric(student.p1, student.t1, student.p2, student.t2, weights)["m"]
        score.student_m_se = _std(score.replicates["student_m"])
    return score


def true_classes(loader) -> torch.Tensor | None:
    """The true class of every image a scoring loader serves per pass, in serving order (the data
    set's labels at its indices; the loaders serve them in order), or None for another loader."""
    data = getattr(loader, "dataset", None)
    if data is None or not hasattr(data, "indices") or not hasattr(getattr(data, "source", None), "targets"):
        return None
    return data.source.targets[data.indices]


def score_augmentation(name: str, teacher: nn.Module, loader: Iterable, num_classes: int, device="cpu",
                       student: nn.Module | None = None, seed: int = 0) -> AugmentScore:
    """Score one DA: pass 1 builds the prototypes, pass 2 (fresh draws) the CMI (docs/METHOD.md §1);
    every other selector comes from the same two passes. Networks run in eval mode, then restored."""
    start = time.perf_counter()
    nets = [teacher] if student is None else [teacher, student]
    passes = two_passes(nets, loader, num_classes, device)
    return score_passes(name, passes[0], passes[1] if student is not None else None, time.perf_counter() - start, seed=seed,
                        classes=true_classes(loader))


def score_augmentations(
    teacher: nn.Module,
    datamodule,
    candidates: Sequence[str],
    num_samples: int | None,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    student: nn.Module | None = None,
    chunk: int | None = None,
    prune: Callable[[list[AugmentScore]], list[str]] | None = None,
) -> list[AugmentScore]:
    """Score every candidate DA, in order, with every selector.

    Every candidate sees the same class-stratified images (fixed by ``seed``), through the same
    pipeline training uses (``datamodule.scoring_loader``); only the DA's own draws differ. With a
    ``student`` (the calibrated low-bit network), ``student_m`` is scored on the same draws.

    With ``chunk`` and ``prune``, scoring goes in rounds of ``chunk`` more images (both passes, every
    network) for the candidates still in the race, and after each round ``prune(scores so far)``
    names the candidates that stay; it stops when one is left or the images run out
    (``num_samples`` is then the cap). A candidate's ``num_samples`` says how many images it used.
    """
    networks = [teacher] if student is None else [teacher, student]
    loader = datamodule.scoring_loader(candidates, num_samples, batch_size, seed)
    n = len(loader.dataset.indices)
    classes = true_classes(loader)
    step = max(chunk, datamodule.num_classes) if (chunk and prune) else n  # a round holds every class (interleaved order)
    recorders = {k: PassRecorder(networks, datamodule.num_classes, device) for k in range(len(candidates))}
    seconds = dict.fromkeys(recorders, 0.0)
    scores: dict[int, AugmentScore] = {}
    active = list(range(len(candidates)))
    with eval_mode(*networks):
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            loader.batch_sampler.set_round(active, lo, hi)
            clock = time.perf_counter()
            for k, p, images, labels in loader:
                recorders[k].add(p, images, labels)
                now = time.perf_counter()
                seconds[k] += now - clock  # the wait for this batch and its forward passes
                clock = now
            for k in active:
                s = recorders[k].score(candidates[k], seed, classes[:hi] if classes is not None else None)
                s.seconds = seconds[k]
                scores[k] = s
            pair_standard_errors([scores[k] for k in active])  # the candidates of this round share its images
            if hi < n and prune is not None:
                keep = set(prune([scores[k] for k in active]))
                out = [candidates[k] for k in active if candidates[k] not in keep]
                if out:
                    log.info("DA metric: after %d images, %s out of the race", hi, ", ".join(out))
                active = [k for k in active if candidates[k] in keep]
                if len(active) <= 1:
                    break
    final = {s.name: s.num_samples for s in scores.values()}
    for k in sorted(scores):
        s = scores[k]
        s.replicates = {}  # the paired standard errors are taken; 200 floats per field and candidate need not stay
        # Only pairs scored on the same images keep a paired standard error (one out of the race early has fewer).
        s.paired_se = {f: {o: v for o, v in d.items() if final.get(o) == s.num_samples} for f, d in s.paired_se.items()}
        log.info("DA metric: %-22s M=%.4f±%.4f CE-CMI=%.4f±%.4f (DEV=%.4f, CMI=%.4f) on %d images in %.1fs", s.name, s.m, s.m_se,
                 s.ce_cmi, s.ce_cmi_se, s.dev, s.cmi, s.num_samples, s.seconds)
    return [scores[k] for k in range(len(candidates))]


@dataclass
class Selection:
    """The training DA and how it was decided: "argmin <selector>" over ``scores``, "fixed" by the
    config, or restored from a checkpoint."""

    selected: str
    how: str
    scores: list[AugmentScore]

    def as_dict(self) -> dict:
        return {"selected": self.selected, "how": self.how, "scores": [s.as_dict() for s in self.scores]}

    @classmethod
    def from_dict(cls, d: dict) -> Selection:
        return cls(d["selected"], d["how"], [AugmentScore.from_dict(s) for s in d["scores"]])


def pick(candidates: Sequence[tuple[str, float]]) -> str:
    """The name with the lowest value; a tie goes to the first, in pool order. The one tie rule
    shared by ``augment=auto`` and the report."""
    if not candidates:
        raise ValueError("no scored candidates to select from")
    best = min(range(len(candidates)), key=lambda i: candidates[i][1])
    return candidates[best][0]


def select_augmentation(scores: Sequence[AugmentScore], selector: str = "m") -> str:
    """argmin of ``selector`` over the candidates in pool order (ties: the first; ``pick``)."""
    if not scores:
        raise ValueError("no scored candidates to select from")
    values = [selector_value(s, selector) for s in scores]
    if any(math.isnan(v) for v in values):
        raise ValueError(f"selector {selector!r} has no value for some candidates (student_m needs a quantized student)")
    return pick([(s.name, v) for s, v in zip(scores, values)])


def format_ranking(scores: list[AugmentScore], selected: str | None = None, selector: str = "m", tied: Sequence[str] = (),
                   how: str | None = None) -> str:
    """A plain-text table of candidates, best first by ``selector``, each score with its standard error;
    ``tied`` candidates (those that cannot be told apart from the leader) are marked, and ``how``
    says which rule decided."""
    head = (f"{'rank':>4}  {'augment':<24} {'M ± se':>16} {'CE-CMI ± se':>16} {'DEV':>7} {'CMI':>7} {'variance':>9} {'entropy':>8} "
            f"{'T-acc':>6} {'T-CE':>6} {'student M':>10} {'n':>6} {'sec':>5}")
    lines = [f"(ranked by {selector}; lower is predicted better; = marks candidates within the tie bound of the leader)", head,
             "-" * len(head)]
    for r, s in enumerate(sorted(scores, key=lambda s: selector_value(s, selector)), 1):
        mark = ("  <- selected" if s.name == selected else "")
        tie = "=" if s.name in tied and len(tied) > 1 else " "
        lines.append(
            f"{r:>3}{tie}  {s.name:<24} {s.m:>8.4f} ± {s.m_se:<5.4f} {s.ce_cmi:>8.4f} ± {s.ce_cmi_se:<5.4f} {s.dev:>7.4f} {s.cmi:>7.4f} "
            f"{s.variance:>9.4f} {s.entropy:>8.4f} {s.teacher_acc:>6.3f} {s.teacher_ce:>6.3f} {s.student_m:>10.4f} {s.num_samples:>6d} "
            f"{s.seconds:>5.1f}{mark}"
        )
    if len(tied) > 1:
        lines.append(f"The leading {len(tied)} candidates ({', '.join(tied)}) cannot be told apart by {selector}.")
    if how:
        lines.append(f"Decided by: {how}")
    return "\n".join(lines)
