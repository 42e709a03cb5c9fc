"""``python -m daqkd.report multirun/<sweep> [more folders] [--rows F --cols F]``: sweeps → evidence.

Reads every ``results.json`` below the folders, and inside the ``*.tar.gz`` archives there (the
committed grids are packed so). Failed jobs (status "failed") are counted, named and left out. A
*setting* is everything a run was configured with except its seed, its DA and what only decides
where files go or what is shown (``paths``, loggers, progress bars, loader workers, the ``speed``
switches; ``runs.NOT_A_SETTING``, each tested to leave a run's numbers as they are) and the keys of
augment=auto's rule (auto runs of a setting are told apart by them): runs that differ in anything
else (epochs, ``kd.alpha``, the teacher's DA, a learning rate, ``metric.num_samples`` ...) are
different settings, and each setting's title names the keys in which the settings of the report
differ. Two runs of one setting, DA and seed are an error naming both folders. Every statistic is
daqkd.significance's, compared paired by seed. Per setting it reports:

- the commits the runs were made at, flagging runs from a tree with uncommitted changes;
- every fixed DA: the student's test accuracy, mean ± SD over seeds, its difference from minimal
  paired by seed (± SE, exact sign-flip p, seeds), and each selector's score (mean over seeds);
- whether the DAs differ at all (a within-seed permutation test of all DAs at once) and where the
  spread comes from (seed offsets, DA effects, residual);
- the selector table (the DA paper's Table 1): Spearman ρ between each selector's score and the mean
  accuracy across DAs with its exact permutation p, ρ within each seed, the DA each selector picks
  (ties: the first in pool order, as ``augment=auto`` does), its rank and its regret;
- the real ``augment=auto`` runs and the shipped rule replayed on the recorded scores, each against
  minimal and against the best fixed DA, paired by seed.

When settings differ only in ``trainer.max_epochs``, the report adds the budget curve: the same
comparisons per budget, as tables and as ``budget.png``. It writes ``report.md``, ``report.csv``
(the selector tables) and ``paired.csv`` (every paired comparison) into the first folder,
``scatter.png`` (accuracy against M, one panel per setting) and ``budget.png``; wherever something
is left out, a line says why. ``--rows``/``--cols`` add a plain pivot table of any field (e.g.
``--rows quantizer --cols bits``). Selector values are "lower is predicted better"
(daqkd.metric.SELECTORS), so a selector that works has a negative ρ.
"""
from daqkd.report.command import main, report
from daqkd.report.runs import FIELDS, NOT_A_SETTING, RULE_KEYS, ReportError, field, load_results, setting_config
from daqkd.report.settings import Setting, budget_families, settings_of
from daqkd.significance import spearman

__all__ = ["FIELDS", "NOT_A_SETTING", "RULE_KEYS", "ReportError", "Setting", "budget_families", "field", "load_results", "main", "report",
           "setting_config", "settings_of", "spearman"]
