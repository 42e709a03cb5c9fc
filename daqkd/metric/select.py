"""From scores to the training DA: the decision rule of ``augment=auto``, and the selection stage of a run.

The rule (``metric.*``; README "Does the metric predict?" holds the evidence it was chosen from):

1. **Which selector.** ``metric.selector=auto`` picks by the student's planned budget, known before
   training: below ``metric.long_epochs`` epochs the reference code's CE − CMI (``ce_cmi``), which
   prefers DAs the teacher finds easy; at or above it the paper's M = DEV − CMI (``m``), which
   prefers DAs that confuse the teacher. Strong DAs cost accuracy at short budgets and pay off at
   long ones. Any selector name uses that selector at every budget.
2. **Ties.** Candidates whose value is within ``metric.tie_z`` standard errors of their difference
   from the leader's cannot be told apart. That standard error is paired: the candidates are scored
   on the same images with the same bootstrap resamples, so it is the spread of the resamples'
   differences, in which the images' own difficulty cancels (records written before it existed fall
   back to √(se_leader² + se²)). Only candidates scored on every image the leader was scored on are
   compared: one that dropped out of the race early (scoring in rounds) was at least
   ``metric.stop_z`` such standard errors behind on the images it saw, and its score from fewer images
   is not comparable (CMI from a small sample is biased upwards). ``metric.tie=milder`` then takes the one the
   teacher finds easiest: the one it classifies most accurately (then the lowest cross-entropy), the
   least risk of a DA the student cannot fit. (Not the lowest cross-entropy alone: a DA that blanks the
   image leaves a weak teacher uncertain, which costs less cross-entropy than its confident mistakes
   on a real DA.) ``first`` takes the first of them in pool order.
The same function decides in a run, in ``python -m daqkd.score`` and in the report.
"""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from daqkd.io import read_checkpoint
from daqkd.metric.scoring import SELECTORS, AugmentScore, Selection, difference_se, format_ranking, score_augmentations, selector_value

log = logging.getLogger(__name__)

TIES = ("milder", "first")
# The columns of augment_scores.csv and the W&B table: every scalar of the record (paired_se stays in results.json).
SCORE_FIELDS = [f.name for f in fields(AugmentScore) if f.name not in ("paired_se", "replicates", "replicate_key")]
STATE_KEY = "DAMetricCallback"  # where checkpoints keep the selection (the callback's Lightning state key)


@dataclass(frozen=True)
class Rule:
    """How ``augment=auto`` turns scores into a DA (the module's docstring)."""

    selector: str = "auto"
    short: str = "ce_cmi"
    long: str = "m"
    long_epochs: int | None = 40
    tie: str = "milder"
    tie_z: float = 1.0

    def __post_init__(self):
        for key in ("short", "long") + (() if self.selector == "auto" else ("selector",)):
            if getattr(self, key) not in SELECTORS:
                raise ValueError(f"metric.{key}={getattr(self, key)} is not a selector; choose one of {', '.join(SELECTORS)}")
        if self.tie not in TIES:
            raise ValueError(f"metric.tie={self.tie} is not a tie rule; choose one of {', '.join(TIES)}")

    def selector_for(self, epochs: int | None) -> tuple[str, str]:
        """(the selector used at ``epochs`` planned student epochs, why)."""
        if self.selector != "auto":
            return self.selector, f"metric.selector={self.selector}"
        if self.long_epochs is None or epochs is None or epochs < self.long_epochs:
            return self.short, f"{epochs} planned epochs < metric.long_epochs={self.long_epochs}"
        return self.long, f"{epochs} planned epochs ≥ metric.long_epochs={self.long_epochs}"

    def needs_student(self, epochs: int | None) -> bool:
        return self.selector_for(epochs)[0] == "student_m"


@dataclass
class Decision:
    selected: str
    selector: str
    leader: str
    tied: list[str]  # the candidates that cannot be told apart from the leader, leader first
    how: str
    compared: list[str] = field(default_factory=list)  # the candidates scored on every image (the others dropped out early)


def within(scores: Sequence[AugmentScore], selector: str, z: float) -> tuple[AugmentScore, list[AugmentScore]]:
    """(the leader, the candidates whose ``selector`` value is within ``z`` standard errors of the
    difference from the leader's, the leader included, in pool order). A selector without a
    standard error ties no one."""
    values = [selector_value(s, selector) for s in scores]
    lead = min(range(len(scores)), key=values.__getitem__)  # ties of equal values: the first in pool order
    close = []
    for s, v in zip(scores, values):
        se = 0.0 if s is scores[lead] else difference_se(scores[lead], s, selector)
        if v - values[lead] <= z * (0.0 if math.isnan(se) else se):
            close.append(s)
    return scores[lead], close


def decide(scores: Sequence[AugmentScore], rule: Rule, epochs: int | None) -> Decision:
    """The training DA among ``scores`` (in pool order) under ``rule`` at ``epochs`` planned epochs;
    only the candidates scored on the most images are compared (the module's docstring)."""
    if not scores:
        raise ValueError("no scored candidates to select from")
    selector, why = rule.selector_for(epochs)
    if any(math.isnan(selector_value(s, selector)) for s in scores):
        raise ValueError(f"selector {selector!r} has no value for some candidates (student_m needs a quantized student)")
    most = max(s.num_samples for s in scores)
    compared = [s for s in scores if s.num_samples == most]
    early = [s.name for s in scores if s.num_samples < most]
    out = f"; {', '.join(early)} out of the race before {most} images, not compared" if early else ""
    leader, tied = within(compared, selector, rule.tie_z)
    tied.sort(key=lambda s: s is not leader)  # the leader first, then pool order
    if rule.tie == "milder" and len(tied) > 1:
        chosen = min(tied, key=lambda s: (-s.teacher_acc, s.teacher_ce))
        how = (f"{selector} ({why}); {', '.join(s.name for s in tied)} within {rule.tie_z:g} paired standard errors of "
               f"the leader {leader.name}: the milder ({chosen.name}, the teacher's most accurate) wins{out}")
    elif len(tied) > 1:
        chosen = min(tied, key=lambda s: scores.index(s))  # the first of the tied in pool order
        how = f"{selector} ({why}); {', '.join(s.name for s in tied)} tied: the first in pool order ({chosen.name}) wins{out}"
    else:
        chosen = leader
        how = f"argmin {selector} ({why}){out}"
    return Decision(chosen.name, selector, leader.name, [s.name for s in tied], how, [s.name for s in compared])


def pruner(rule: Rule, epochs: int | None, z: float) -> Callable[[list[AugmentScore]], list[str]]:
    """For scoring in rounds (``score_augmentations``): after each round, the candidates still in the
    race under ``rule``'s selector, those within ``z`` paired standard errors of the leader (all were
    scored on the same images so far). One left means the leader is ahead of every other by more than
    that, and scoring stops."""
    selector = rule.selector_for(epochs)[0]
    with_se = SELECTORS.meta(selector).get("field") is not None

    def prune(scores: list[AugmentScore]) -> list[str]:
        if not with_se:  # a selector registered without a standard error never decides early: every image is scored
            return [s.name for s in scores]
        return [s.name for s in within(scores, selector, z)[1]]

    return prune


def rule_from_config(metric) -> Rule:
    return Rule(selector=str(metric.selector), short=str(metric.short), long=str(metric.long),
                long_epochs=metric.long_epochs, tie=str(metric.tie), tie_z=float(metric.tie_z))


def choose(candidates: Sequence[str], fixed: str | None, datamodule, teacher: torch.nn.Module, student: torch.nn.Module | None,
           device, rule: Rule, epochs: int | None, num_samples: int | None, batch_size: int, seed: int,
           output_dir: str | Path | None = None, chunk: int | None = None, stop_z: float = 3.0) -> Selection:
    """Score ``candidates`` with the teacher (and ``student``, for ``student_m``) and decide: the DA
    ``fixed`` when given, else the rule's. Deciding, scoring goes in rounds of ``chunk`` images and
    stops when the rule's leader is ahead of every other candidate by ``stop_z`` paired standard
    errors (candidates that far behind stop early); a fixed DA is scored on every image. Logs the
    ranking and writes ``augment_scores.csv``."""
    scores: list[AugmentScore] = []
    if candidates:
        nets = [teacher.to(device)] + ([student.to(device)] if student is not None else [])
        adaptive = fixed is None and chunk is not None
        scores = score_augmentations(nets[0], datamodule, list(dict.fromkeys(candidates)), num_samples, batch_size, seed, device,
                                     nets[1] if len(nets) > 1 else None, chunk=chunk if adaptive else None,
                                     prune=pruner(rule, epochs, stop_z) if adaptive else None)
    tied: list[str] = []
    if fixed is not None:
        selection = Selection(fixed, "fixed", scores)
        selector = rule.selector_for(epochs)[0]
    else:
        d = decide(scores, rule, epochs)
        selection, selector, tied = Selection(d.selected, d.how, scores), d.selector, d.tied
    if scores:
        log.info("DA ranking:\n%s", format_ranking(scores, selection.selected, selector, tied, selection.how))
    log.info("DA: training with %s (%s)", selection.selected, selection.how)
    if output_dir and scores:
        path = Path(output_dir) / "augment_scores.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SCORE_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(s.as_dict() for s in sorted(scores, key=lambda s: selector_value(s, selector)))
    return selection


def restore(checkpoint_path: str, fixed: str | None) -> Selection:
    """The selection a checkpoint holds (a resumed run keeps its DA, without scoring again)."""
    state = read_checkpoint(checkpoint_path).get("callbacks", {}).get(STATE_KEY)
    if not state or not state.get("selected"):
        raise RuntimeError(f"{checkpoint_path} holds no DA selection ({STATE_KEY}); it was not written by this version of daqkd. "
                           "Start the run afresh (ckpt_path=null).")
    selection = Selection.from_dict(state)
    if fixed is not None and selection.selected != fixed:
        raise RuntimeError(f"{checkpoint_path} trained with augment={selection.selected}, but this run asks for augment={fixed}; a "
                           f"resumed run keeps its DA. Resume with augment={selection.selected}, or start afresh in a new folder.")
    log.info("DA: restored from %s, training with %s (%s)", checkpoint_path, selection.selected, selection.how)
    return selection
