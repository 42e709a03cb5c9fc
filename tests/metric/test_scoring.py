"""The streaming scorer equals the functional core; the teacher runs in eval mode (daqkd/metric/scoring.py)."""
import pytest
import torch
import torch.nn as nn

from daqkd import build
from daqkd.metric import (
    metric_score,
    score_augmentation,
)
from daqkd.metric.scoring import score_augmentations


def test_every_candidate_is_scored_on_the_same_images(make_cfg, monkeypatch):
    from daqkd.augment.pipeline import CandidateImages

    cfg = make_cfg()
    dm = build.build_datamodule(cfg)
    seen = {}
    getitem = CandidateImages.__getitem__

    def spy(self, item):
        k, _, i, _ = item
        seen.setdefault(k, []).append(int(self.indices[i]))
        return getitem(self, item)

    monkeypatch.setattr(CandidateImages, "__getitem__", spy)
    score_augmentations(build.build_model(cfg).eval(), dm, ["minimal", "cutmix", "augmix"], 100, 50, 3)
    assert len(seen) == 3 and all(v == seen[0] for v in seen.values())  # the same images, in the same order
    assert len(seen[0]) == 2 * 100 and seen[0][:100] == seen[0][100:]  # two passes over the same 100 images


def test_the_pool_loader_scores_exactly_what_each_candidate_loader_scores(make_cfg):
    """One loader for the whole pool (workers started once) gives, candidate by candidate, the numbers
    of scoring each candidate with its own loader."""
    cfg = make_cfg()
    dm = build.build_datamodule(cfg)
    teacher = build.build_model(cfg).eval()
    pool = score_augmentations(teacher, dm, ["trivialaugment", "cutmix"], 100, 30, 3)
    for s in pool:
        alone = score_augmentation(s.name, teacher, dm.augment_loader(s.name, 100, 30, 3), 10, seed=3)
        assert (s.m, s.dev, s.cmi, s.variance, s.m_se) == (alone.m, alone.dev, alone.cmi, alone.variance, alone.m_se)


class RecordingLoader:
    """Yields fresh random 'augmented' batches each pass and remembers them."""

    def __init__(self, labels, num_classes, soft=False, batch=7, seed=0):
        self.labels, self.c, self.soft, self.batch = labels, num_classes, soft, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.passes = []

    def __iter__(self):
        record = []
        for i in range(0, len(self.labels), self.batch):
            y = self.labels[i : i + self.batch]
            x = torch.randn(len(y), self.c, generator=self.gen) + 2 * torch.nn.functional.one_hot(y, self.c)
            if self.soft:
                lam = torch.rand(len(y), 1, generator=self.gen)
                y = lam * torch.nn.functional.one_hot(y, self.c) + (1 - lam) * torch.nn.functional.one_hot(y.roll(1), self.c)
            record.append((x, y))
            yield x, y
        self.passes.append(record)

@pytest.mark.parametrize("soft", [False, True])
def test_streaming_scorer_equals_functional_core(soft):
    labels = torch.arange(60) % 4
    loader = RecordingLoader(labels, 4, soft=soft)
    teacher = nn.Identity()  # logits = the inputs
    s = score_augmentation("x", teacher, loader, 4)
    (p1, p2) = [(torch.softmax(torch.cat([b[0] for b in r]), 1), torch.cat([b[1] for b in r])) for r in loader.passes]
    ref = metric_score(p1[0], p2[0], p1[1], p2[1], 4)
    assert not torch.equal(p1[0], p2[0])  # the passes drew different augmentations
    assert s.cmi == pytest.approx(ref["cmi"], rel=1e-9)
    assert s.dev == pytest.approx(ref["dev"], rel=1e-9)
    assert s.m == pytest.approx(ref["m"], rel=1e-9)
    assert s.num_samples == 60

def test_scorer_uses_teacher_in_eval_mode_and_restores_it():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 4))
    teacher[1].running_mean.fill_(3.0)  # eval-mode BN differs strongly from batch statistics
    teacher.train()
    labels = torch.arange(40) % 4
    s_train_mode = score_augmentation("x", teacher, RecordingLoader(labels, 4), 4)
    assert teacher.training  # mode restored
    teacher.eval()
    s_eval_mode = score_augmentation("x", teacher, RecordingLoader(labels, 4), 4)
    assert s_train_mode.m == s_eval_mode.m
    assert float(teacher[1].running_mean[0]) == 3.0  # BN statistics untouched


def test_the_bootstrap_resamples_within_classes_and_keeps_every_replicate():
    # 5 images per class: a bootstrap over all images drew no image of some class in 151 of 200
    # replicates, which were silently dropped. Within classes, every replicate keeps every class.
    from daqkd.metric.scoring import BOOTSTRAP, Passes, _bootstrap_weights, score_passes

    y = torch.arange(50) % 10
    w = _bootstrap_weights(y, seed=0)
    assert w.shape == (BOOTSTRAP, 50)
    for c in range(10):  # each class keeps its 5 draws in every replicate, drawn among its own images
        assert torch.equal(w[:, y == c].sum(1), torch.full((BOOTSTRAP,), 5.0, dtype=torch.float64))
    assert not torch.equal(w, torch.ones_like(w))
    gen = torch.Generator().manual_seed(0)
    t = torch.nn.functional.one_hot(y, 10).float()
    p = lambda: torch.softmax(torch.randn(50, 10, generator=gen) + 2 * t, 1)  # noqa: E731
    s = score_passes("x", Passes(p(), t, p(), t))
    assert s.bootstrap_replicates == BOOTSTRAP and s.m_se > 0 and s.cmi_se > 0


def test_scoring_in_rounds_stops_when_decided_and_picks_what_full_scoring_picks(make_cfg):
    """augment=auto scores 25 images at a time; candidates clearly behind the leader (3 combined
    standard errors) drop out, and scoring stops once one is left. The pick is full scoring's, every
    candidate records the images it used, and the first round's numbers are full scoring's own."""
    from daqkd.metric.select import Rule, decide, pruner

    cfg = make_cfg()
    dm = build.build_datamodule(cfg)
    teacher = build.build_teacher(cfg, dm).model
    pool = ["minimal", "cutmix", "autoaugment_imagenet", "augmix"]
    full = score_augmentations(teacher, dm, pool, 100, 25, 3)
    rounds = score_augmentations(teacher, dm, pool, 100, 25, 3, chunk=25, prune=pruner(Rule(), 1, 3.0))
    assert decide(rounds, Rule(), 1).selected == decide(full, Rule(), 1).selected
    used = {s.name: s.num_samples for s in rounds}
    assert set(used.values()) <= {25, 50, 75, 100} and all(s.num_samples == 100 for s in full)
    assert min(used.values()) < 100  # something dropped out early
    # Rounds that keep everyone draw exactly what one pass does (the same batches: CutMix seeds its
    # mixing by the batch): the same numbers, for every selector.
    kept = score_augmentations(teacher, dm, pool, 100, 25, 3, chunk=25, prune=lambda scores: [s.name for s in scores])
    for a, b in zip(full, kept):
        assert b.num_samples == 100
        for key in ("m", "ce_cmi", "dev", "cmi", "entropy", "teacher_acc", "variance"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-5, abs=1e-6), (a.name, key)


def test_rounds_score_a_hundred_classes_from_the_first_round(tmp_path, make_datamodule):
    """A round smaller than the class count would leave classes without a prototype: the metric's
    order interleaves the classes and a round holds at least one image of each."""
    from fakedata import write_cifar

    from daqkd.data.datamodule import interleaved_order
    from daqkd.metric.select import Rule, pruner
    from daqkd.models import create_model

    targets = torch.arange(1000) % 100
    order = interleaved_order(targets, 0)
    assert sorted(order.tolist()) == list(range(1000)) and len(torch.unique(targets[order][:100])) == 100
    write_cifar(tmp_path, "cifar100", n_per_file=300)
    dm = make_datamodule("cifar100", tmp_path, 100, 3, 32, val_size=100, download=False)
    torch.manual_seed(0)
    scores = score_augmentations(create_model("resnet20", 100, 3).eval(), dm, ["minimal", "cutmix"], None, 10, 0, chunk=10,
                                 prune=pruner(Rule(), 1, 3.0))
    assert [s.name for s in scores] == ["minimal", "cutmix"] and all(s.num_samples >= 100 for s in scores)
