"""Grouping runs into settings, and what each setting's runs say: accuracies by DA and seed, every
comparison paired by seed (daqkd.significance), the selectors' rank correlations and picks, the
shipped rule replayed on the recorded scores, and the real ``augment=auto`` runs."""
from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from daqkd.augment.registry import PAPER_POOL
from daqkd.metric.scoring import AugmentScore, pick, selector_value
from daqkd.metric.select import Rule, decide, rule_from_config
from daqkd.report.runs import BUDGET, TITLE, ReportError, commit_of, field, rule_of, setting_config, where
from daqkd.result import RunResult
from daqkd.significance import JointTest, Paired, RankCorrelation, Spread, joint_test, paired, rank_correlation, spread

BASELINE = "minimal"  # every DA is compared with it


def trained_da(r: RunResult) -> str:
    return r.config["augment"]["name"]


def own_score(r: RunResult) -> AugmentScore | None:
    """The scores of the DA a fixed-DA run trained with (recorded when metric.score_fixed=true)."""
    return next((s for s in r.augment_scores if s.name == r.selected_augment), None)


def pool_order(runs: list[RunResult], das: set[str]) -> list[str]:
    """The DAs in pool order (the runs' ``augment.pool``, then the paper pool), the tie rule's order."""
    order: list[str] = []
    for r in runs:
        order += [d for d in r.config.get("augment", {}).get("pool") or [] if d not in order]
    order += [d for d in PAPER_POOL if d not in order]
    return [d for d in order if d in das] + sorted(das - set(order))


@dataclass
class SelectorRow:
    selector: str
    rho: RankCorrelation
    pick: str
    rank: int
    of: int
    regret: float  # points: the best DA's mean accuracy − the pick's


@dataclass
class AutoRow:
    """augment=auto against minimal and the best fixed DA, paired by seed: real runs or a replay."""

    label: str
    picks: dict[str, int]
    acc: float  # mean over its seeds, %
    seeds: int
    vs_minimal: Paired
    best: str  # the fixed DA with the best mean accuracy over the seeds every DA ran (chosen after the fact)
    vs_best: Paired
    selector: str = ""


class Setting:
    """The fixed-DA and auto runs of one setting."""

    def __init__(self, config: dict[str, Any], runs: list[RunResult], varying: Sequence[str] = ()):
        self.config = config
        self.runs = runs
        r0 = runs[0]
        self.title = " / ".join(str(field(r0, f)) for f in TITLE)
        extra = [f"{k}={config.get(k, '–')}" for k in varying]
        self.name = self.title + (" · " + ", ".join(extra) if extra else "")
        self.acc: dict[str, dict[int, float]] = defaultdict(dict)  # DA -> seed -> accuracy (%)
        self.scores: dict[str, dict[int, AugmentScore]] = defaultdict(dict)  # DA -> seed -> its scores
        self.auto: dict[tuple, dict[int, RunResult]] = defaultdict(dict)  # rule -> seed -> the auto run
        seen: dict[tuple, str] = {}
        for r in runs:
            da, seed = trained_da(r), r.config["seed"]
            key = (da, seed, rule_of(r) if da == "auto" else ())
            if key in seen:
                raise ReportError(f"two runs of one setting with augment={da} and seed={seed}: {seen[key]} and {where(r)}; "
                                  "report them apart, or remove one")
            seen[key] = where(r)
            if da == "auto":
                self.auto[rule_of(r)][seed] = r
                continue
            self.acc[da][seed] = 100 * r.student.test_acc
            s = own_score(r)
            if s is not None:
                self.scores[da][seed] = s
        self.pool = pool_order(runs, set(self.acc))  # every fixed DA, in pool order
        # The seeds every fixed DA ran (some DAs may have more: the comparisons that decide the rule are
        # run to more seeds). Means that rank DAs against each other are taken over these, so that no DA
        # gains or loses by the seeds only it has; paired comparisons use every seed the pair shares.
        common = set.intersection(*(set(v) for v in self.acc.values())) if self.acc else set()
        self.block = sorted(common) or sorted({s for v in self.acc.values() for s in v})
        self.das = sorted(self.pool, key=lambda d: -self.mean_acc(d))  # by mean accuracy over the block

    @property
    def epochs(self) -> Any:
        return self.config.get(BUDGET)

    @property
    def commits(self) -> Counter:
        """How many runs of the setting each commit produced ("+dirty": from a tree with uncommitted changes)."""
        return Counter(commit_of(r) for r in self.runs)

    def table(self) -> dict[int, dict[str, float]]:
        """seed -> DA -> accuracy (%), the fixed DAs."""
        out: dict[int, dict[str, float]] = defaultdict(dict)
        for d, by_seed in self.acc.items():
            for s, v in by_seed.items():
                out[s][d] = v
        return dict(out)

    def mean_acc(self, da: str, seeds: Sequence[int] | None = None) -> float:
        """Mean accuracy over ``seeds`` (default: the seeds every fixed DA ran)."""
        vals = [self.acc[da][s] for s in (seeds if seeds is not None else self.block) if s in self.acc[da]]
        return statistics.fmean(vals) if vals else math.nan

    def mean_score(self, da: str, selector: str, seeds: Sequence[int] | None = None) -> float:
        """Mean of the selector's value over ``seeds`` (default: the seeds every fixed DA ran)."""
        vals = [selector_value(self.scores[da][s], selector) for s in (seeds if seeds is not None else self.block)
                if s in self.scores[da]]
        vals = [v for v in vals if not math.isnan(v)]
        return statistics.fmean(vals) if vals else math.nan

    def scored(self, selector: str) -> list[str]:
        """The DAs with a value of ``selector``, in pool order."""
        return [d for d in self.pool if not math.isnan(self.mean_score(d, selector))]

    def pick(self, selector: str) -> str:
        return pick([(d, self.mean_score(d, selector)) for d in self.scored(selector)])

    # ------------------------------------------------------------------ paired comparisons

    def versus(self, da: str, other: str = BASELINE) -> Paired:
        """``da − other``, paired by seed."""
        return paired(self.acc.get(da, {}), self.acc.get(other, {}))

    def joint(self, draws: int = 20_000) -> JointTest | None:
        """Do the fixed DAs differ at all (a within-seed permutation test over every run)?"""
        return joint_test(self.table(), draws=draws)

    def spread(self) -> Spread | None:
        return spread(self.table())

    # ------------------------------------------------------------------ selectors

    def selector_row(self, selector: str) -> SelectorRow | None:
        das = self.scored(selector)
        if len(das) < 3:  # a rank correlation needs at least three DAs
            return None
        score = {d: {s: selector_value(sc, selector) for s, sc in self.scores[d].items() if s in self.block} for d in das}
        rho = rank_correlation(score, {d: {s: v for s, v in self.acc[d].items() if s in self.block} for d in das})
        picked = self.pick(selector)
        best = max(das, key=self.mean_acc)
        by_acc = sorted(das, key=lambda d: -self.mean_acc(d))
        return SelectorRow(selector, rho, picked, by_acc.index(picked) + 1, len(das), self.mean_acc(best) - self.mean_acc(picked))

    # ------------------------------------------------------------------ augment=auto

    def _auto_row(self, label: str, accs: dict[int, float], picks: dict[int, str], selector: str) -> AutoRow:
        seeds = sorted(accs)
        best = self.das[0] if self.das else "–"  # the best fixed DA of the setting, by its mean over the common seeds
        return AutoRow(label, dict(Counter(picks.values())), statistics.fmean(accs.values()), len(seeds),
                       paired(accs, self.acc.get(BASELINE, {})), best, paired(accs, self.acc.get(best, {})), selector)

    def rule_row(self, rule: Rule | None = None) -> AutoRow | None:
        """What ``augment=auto`` with ``rule`` (default: the shipped one) would have trained: seed by
        seed, the rule's pick from that seed's recorded scores, and that DA's accuracy with that seed."""
        rule = rule or Rule()
        das = [d for d in self.pool if self.scores[d]]
        seeds = sorted(s for s in set().union(*(self.acc[d].keys() for d in das))
                       if all(s in self.scores[d] and s in self.acc[d] for d in das)) if das else []
        if len(das) < 2 or not seeds:
            return None
        epochs = self.epochs if isinstance(self.epochs, int) else None
        try:
            picks = {s: decide([self.scores[d][s] for d in das], rule, epochs) for s in seeds}
        except ValueError:  # a selector the runs did not record (student_m without a student)
            return None
        accs = {s: self.acc[picks[s].selected][s] for s in seeds}
        return self._auto_row("the shipped rule, replayed", accs, {s: p.selected for s, p in picks.items()}, picks[seeds[0]].selector)

    def auto_rows(self) -> list[AutoRow]:
        """The real augment=auto runs, one row per rule they ran with."""
        rows = []
        for rule, by_seed in self.auto.items():
            diff = [f"{k}={v}" for k, v in rule if len({dict(r).get(k) for r in self.auto}) > 1]
            label = "augment=auto" + (f" ({', '.join(diff)})" if diff else "")
            accs = {s: 100 * r.student.test_acc for s, r in by_seed.items()}
            run = next(iter(by_seed.values()))
            try:
                selector = rule_from_config(OmegaConf.create(run.config["metric"])).selector_for(self.epochs)[0]
            except (KeyError, ValueError, TypeError, AttributeError):  # a config without the rule's keys (an older run)
                selector = ""
            rows.append(self._auto_row(label, accs, {s: r.selected_augment for s, r in by_seed.items()}, selector))
        return rows


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str)


def settings_of(runs: list[RunResult]) -> list[Setting]:
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    configs: dict[tuple, dict] = {}
    for r in runs:
        cfg = setting_config(r)
        key = tuple(sorted((k, _hashable(v)) for k, v in cfg.items()))
        groups[key].append(r)
        configs[key] = cfg
    keys = sorted(set().union(*(c.keys() for c in configs.values()))) if configs else []
    varying = [k for k in keys if len({_hashable(c.get(k)) for c in configs.values()}) > 1]
    settings = [Setting(configs[k], v, varying) for k, v in groups.items()]
    return sorted(settings, key=lambda st: (st.title, str([st.config.get(k) for k in varying if k != BUDGET]),
                                            st.epochs if isinstance(st.epochs, (int, float)) else 0))


def budget_families(settings: list[Setting]) -> list[list[Setting]]:
    """Settings equal in everything but the epochs, at least two budgets each, cheapest first."""
    fam: dict[str, list[Setting]] = defaultdict(list)
    for st in settings:
        if isinstance(st.epochs, int):
            fam[_hashable({k: v for k, v in st.config.items() if k != BUDGET})].append(st)
    return [sorted(v, key=lambda st: st.epochs) for v in fam.values() if len(v) > 1]


def family_name(family: list[Setting]) -> str:
    name = family[0].name
    return name.replace(f"{BUDGET}={family[0].epochs}, ", "").replace(f", {BUDGET}={family[0].epochs}", "").replace(
        f" · {BUDGET}={family[0].epochs}", "")

