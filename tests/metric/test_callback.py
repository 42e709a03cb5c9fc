"""The DA callback decides before any loader exists and installs exactly that DA (daqkd/metric/callback.py)."""
import types

import pytest
import torch

from daqkd import build


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
    cb = build.build_selection(cfg, None)
    cb.setup(_Trainer(dm), types.SimpleNamespace(teacher=teacher, student=student), "fit")
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
    cb = build.build_selection(cfg, None)
    cb.setup(_Trainer(dm), types.SimpleNamespace(teacher=teacher, student=None), "fit")
    assert dm.train_augment == "augmix" and cb.selection.scores == [] and cb.selection.how == "fixed"


def test_a_checkpoint_without_a_selection_is_refused(make_cfg, tmp_path):
    ckpt = tmp_path / "old.ckpt"
    torch.save({"callbacks": {}}, ckpt)
    cb = build.build_selection(make_cfg(), str(ckpt))
    with pytest.raises(RuntimeError, match="holds no DA selection"):
        cb.setup(_Trainer(build.build_datamodule(make_cfg())), types.SimpleNamespace(teacher=None, student=None), "fit")
