"""The selection stage (build.build_selection: score, then decide) and the callback that installs its
decision before any loader exists (daqkd/metric/select.py, daqkd/metric/callback.py)."""
import types

import pytest
import torch

from daqkd import build
from daqkd.metric.callback import DAMetricCallback
from daqkd.metric.scoring import Selection


class _Trainer(types.SimpleNamespace):
    """What DAMetricCallback.setup reads from a Trainer, on one CPU process."""

    def __init__(self, dm):
        strategy = types.SimpleNamespace(root_device=torch.device("cpu"), broadcast=lambda obj, src=0: obj)
        super().__init__(is_global_zero=True, strategy=strategy, datamodule=dm, loggers=[])

@pytest.mark.parametrize("n,score_student", [(100, True), (200, False)])
def test_metric_num_samples_is_what_the_teacher_scores(make_cfg, n, score_student):
    cfg = make_cfg(f"metric.num_samples={n}", "augment.pool=[minimal,cutmix]", f"metric.score_student={score_student}")
    dm = build.build_datamodule(cfg)
    teacher = build.build_model(cfg).eval()
    student = build.build_student(cfg, teacher, dm)
    seen, seen_student = [], []
    teacher.register_forward_pre_hook(lambda m, inp: seen.append(len(inp[0])))
    student.register_forward_pre_hook(lambda m, inp: seen_student.append(len(inp[0])))
    cb = DAMetricCallback(build.build_selection(cfg, dm, teacher, student, None))
    assert dm.train_augment is None  # decided, not yet installed
    cb.setup(_Trainer(dm), None, "fit")
    assert sum(seen) == 2 * 2 * n  # two candidates, two passes each
    # student_m: the same two passes through the student, only when asked for (two more passes per DA)
    assert sum(seen_student) == (2 * 2 * n if score_student else 0)
    assert all(s.student_m == s.student_m for s in cb.selection.scores) == score_student  # NaN when not scored
    assert dm.train_augment == cb.selection.selected


def test_fixed_da_without_scoring_installs_it_and_scores_nothing(make_cfg):
    cfg = make_cfg("augment=augmix", "metric.score_fixed=false")
    dm = build.build_datamodule(cfg)
    teacher = build.build_model(cfg).eval()
    teacher.register_forward_pre_hook(lambda m, inp: pytest.fail("scored although metric.score_fixed=false"))
    cb = DAMetricCallback(build.build_selection(cfg, dm, teacher, None, None))
    cb.setup(_Trainer(dm), None, "fit")
    assert dm.train_augment == "augmix" and cb.selection.scores == [] and cb.selection.how == "fixed"


def test_a_checkpoint_without_a_selection_is_refused(make_cfg, tmp_path):
    ckpt = tmp_path / "old.ckpt"
    torch.save({"callbacks": {}}, ckpt)
    with pytest.raises(RuntimeError, match="holds no DA selection"):
        build.build_selection(make_cfg(), build.build_datamodule(make_cfg()), None, None, str(ckpt))


def test_only_rank_0_decides_and_every_rank_installs_its_decision(make_cfg, monkeypatch):
    """Under DDP every rank runs the run's stages; only rank 0 scores, and the callback broadcasts
    its decision, so every rank trains with the same DA even if their scores would differ."""
    cfg = make_cfg()
    dm = build.build_datamodule(cfg)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr("daqkd.metric.select.score_augmentations", lambda *a, **k: pytest.fail("rank 1 scored"))
    assert build.build_selection(cfg, dm, None, None, None) is None
    rank0 = Selection("cutmix", "argmin m", [])
    trainer = _Trainer(dm)
    trainer.strategy.broadcast = lambda obj, src=0: rank0
    cb = DAMetricCallback(None)
    cb.setup(trainer, None, "fit")
    assert dm.train_augment == "cutmix" and cb.selection is rank0
