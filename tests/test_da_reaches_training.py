"""The DA a run decides on is the DA its student trains with: the batches of a real fit are compared
with what that DA's pipeline produces, built independently, for the same images and draws."""
import lightning as L
import pytest
import torch

import daqkd.run as run
from daqkd.augment import AugmentPipeline, SeededSampler, build_augmentation
from daqkd.metric.callback import DAMetricCallback

pytestmark = pytest.mark.slow


class FirstBatches(L.Callback):
    """Records the first training batch of every epoch, as the training step receives it."""

    def __init__(self):
        self.batches = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.batches[trainer.current_epoch] = (batch[0].detach().clone(), batch[1].detach().clone())


def expected_first_batch(cfg, augment: str, epoch: int):
    """The first training batch of ``epoch`` under ``augment``, rebuilt from the data and the DA."""
    dm = run.build_datamodule(cfg)
    dm.setup()
    d = cfg.dataset.datamodule
    pipe = AugmentPipeline(build_augmentation(augment, cfg.dataset.num_classes), d.mean, d.std,
                           cfg.dataset.image_size, d.padding, d.flip)
    order = SeededSampler(len(dm.train_idx), cfg.seed, "train", shuffle=True).order(epoch)[: d.batch_size]
    samples = []
    for i, draw in order:
        j = int(dm.train_idx[i])
        samples.append((pipe.transform(dm.train_set.image(j), draw), int(dm.train_set.targets[j]), draw))
    return pipe.collate(samples)


SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "dataset.datamodule.test_subset=64"]


@pytest.mark.parametrize("augment", ["minimal", "cutmix", "trivialaugment"])
def test_fixed_da_reaches_the_first_training_batch(make_cfg, augment):
    cfg = make_cfg(f"augment={augment}", "metric.score_fixed=false", *SHORT)
    rec = FirstBatches()
    results = run.train(cfg, extra_callbacks=[rec])
    x, y = rec.batches[0]
    ex, ey = expected_first_batch(cfg, augment, epoch=0)
    assert torch.equal(x, ex) and torch.equal(y, ey)
    if augment == "cutmix":
        assert y.shape == (cfg.dataset.datamodule.batch_size, 10)
        assert torch.allclose(y.sum(1), torch.ones(len(y)))
        assert ((y > 0) & (y < 1)).any()  # really mixed, not one-hot
    else:
        assert y.ndim == 1
    if augment != "minimal":  # and it is not what minimal would have given
        mx, _ = expected_first_batch(cfg, "minimal", epoch=0)
        assert not torch.equal(x, mx)
    assert results["selected_augment"] == augment


def test_auto_trains_with_the_candidate_that_wins(make_cfg):
    # Rigged: random_erasing here blanks almost the whole image, so the teacher's predictions carry
    # no class information and its M is far above TrivialAugment's.
    cfg = make_cfg(
        "augment.pool=[random_erasing,trivialaugment]", "+augment.params.random_erasing={p: 1.0, scale: [0.97, 0.99], ratio: [0.9, 1.1]}",
        "teacher.max_epochs=2", *SHORT,
    )
    rec = FirstBatches()
    results = run.train(cfg, extra_callbacks=[rec])
    scores = {s["name"]: s["m"] for s in results["augment_scores"]}
    assert scores["trivialaugment"] < scores["random_erasing"]
    assert results["selected_augment"] == "trivialaugment"
    x, y = rec.batches[0]
    ex, ey = expected_first_batch(cfg, "trivialaugment", epoch=0)
    assert torch.equal(x, ex) and torch.equal(y, ey)


class CrashInSecondEpoch(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_resumed_run_trains_with_the_saved_da_without_rescoring(make_cfg, tmp_path, monkeypatch):
    over = ["augment=cutmix", "trainer.max_epochs=2", *SHORT]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run.train(make_cfg(*over), extra_callbacks=[CrashInSecondEpoch()])
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()

    monkeypatch.setattr("daqkd.metric.callback.score_augmentations", lambda *a, **k: pytest.fail("re-scored on resume"))
    # A different augment= cannot change what the checkpoint trained with: it is refused.
    with pytest.raises(RuntimeError, match="keeps its DA"):
        run.train(make_cfg(*over[1:], "augment=minimal", "ckpt_path=last"))
    rec = FirstBatches()
    cfg = make_cfg(*over, "ckpt_path=last")
    results = run.train(cfg, extra_callbacks=[rec])
    assert list(rec.batches) == [1]  # resumed into epoch 1
    x, y = rec.batches[1]
    ex, ey = expected_first_batch(cfg, "cutmix", epoch=1)
    assert torch.equal(x, ex) and torch.equal(y, ey) and y.ndim == 2
    assert results["selected_augment"] == "cutmix"


def test_reloaded_dataloaders_keep_the_da(make_cfg):
    cfg = make_cfg("augment=trivialaugment", "metric.score_fixed=false", "trainer.max_epochs=2",
                   "+trainer.reload_dataloaders_every_n_epochs=1", *SHORT)
    rec = FirstBatches()
    run.train(cfg, extra_callbacks=[rec])
    for epoch in (0, 1):
        ex, ey = expected_first_batch(cfg, "trivialaugment", epoch=epoch)
        assert torch.equal(rec.batches[epoch][0], ex)


def test_changing_the_da_after_a_loader_exists_is_an_error(make_cfg):
    dm = run.build_datamodule(make_cfg())
    dm.set_train_augment("minimal")
    dm.train_dataloader()
    dm.set_train_augment("minimal")  # the same DA again is fine
    with pytest.raises(RuntimeError, match="cannot change from 'minimal' to 'cutmix'"):
        dm.set_train_augment("cutmix")


def test_no_training_loader_without_a_da(make_cfg):
    dm = run.build_datamodule(make_cfg())
    with pytest.raises(RuntimeError, match="no training DA installed"):
        dm.train_dataloader()


def test_scoring_and_training_share_one_pipeline(make_cfg):
    """The metric's loader applies the DA exactly as the training loader does: same images and
    draws give the same tensors, CutMix included."""
    cfg = make_cfg()
    dm = run.build_datamodule(cfg)
    dm.setup()
    for name in ("trivialaugment", "cutmix"):
        scoring = dm.augment_loader(name, None, 32, seed=7)  # None: every training image, in order
        sx, sy = next(iter(scoring))
        order = scoring.sampler.order(0)[:32]
        assert [i for i, _ in order] == list(range(32))
        pipe = dm.train_loader(name).collate_fn
        assert type(pipe) is AugmentPipeline and pipe.name == name
        samples = [(pipe.transform(dm.train_set.image(int(dm.train_idx[i])), s), int(dm.train_set.targets[dm.train_idx[i]]), s)
                   for i, s in order]
        tx, ty = pipe.collate(samples)
        assert torch.equal(sx, tx) and torch.equal(sy, ty)


def test_every_candidate_is_scored_on_the_same_images(make_cfg, monkeypatch):
    cfg = make_cfg()
    dm = run.build_datamodule(cfg)
    seen = {}
    build = dm.loader

    def spy(source, indices, pipeline, *a, **k):
        seen[pipeline.name] = indices.clone()
        return build(source, indices, pipeline, *a, **k)

    monkeypatch.setattr(dm, "loader", spy)
    cb = DAMetricCallback(["minimal", "cutmix", "augmix"], num_samples=100, batch_size=50, seed=3)
    from daqkd.metric.scoring import score_augmentations

    score_augmentations(run.build_model(cfg).eval(), dm, cb.candidates, 100, 50, 3)
    assert len(seen) == 3 and all(torch.equal(v, seen["minimal"]) for v in seen.values())
    assert len(seen["minimal"]) == 100
