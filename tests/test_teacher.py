"""Teacher resolution: given checkpoints, the cache, training (daqkd/teacher.py)."""
from pathlib import Path

import pytest
import torch

from daqkd import build
from daqkd.io import load_weights


@pytest.mark.slow
def test_given_teacher_and_corrupt_cache(make_cfg, tmp_path):
    cfg = make_cfg("paths.cache_dir=" + str(tmp_path / "cache"))
    dm = build.build_datamodule(cfg)
    first = build.build_teacher(cfg, dm)
    # A Lightning-style checkpoint of one's own is accepted through teacher.ckpt.
    own = tmp_path / "mine.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in first.model.state_dict().items()}}, own)
    given = build.build_teacher(make_cfg(f"teacher.ckpt={own}"), dm)
    assert given.source == "given" and given.test_acc == first.test_acc
    # A torn cache file is moved aside and the teacher retrained, not a crash hours later.
    Path(first.ckpt).write_bytes(b"\x00" * 10)
    torch.manual_seed(12345)  # whatever the caller's random state, the teacher is its identity's
    state = torch.get_rng_state()
    again = build.build_teacher(cfg, dm)
    assert torch.equal(torch.get_rng_state(), state)  # and the caller's random state is left as it was
    assert again.source == "trained" and Path(first.ckpt).with_suffix(".corrupt").is_file()
    assert load_weights(build.build_model(cfg), again.ckpt) is not None
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    other = build.build_teacher(make_cfg("paths.cache_dir=" + str(tmp_path / "cache"), "seed=1"), dm)
    assert other.ckpt != first.ckpt and not torch.equal(other.model.conv1.weight, first.model.conv1.weight)


def test_evaluate_accuracy_restores_the_mode_and_reads_soft_labels():
    from daqkd.teacher import evaluate_accuracy

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Dropout(0.9))
    model.train()
    x = torch.randn(30, 4)
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    model.train()
    labels = torch.where(torch.arange(30) < 20, pred, (pred + 1) % 3)  # 20 of 30 right
    soft = torch.nn.functional.one_hot(labels, 3).float()
    assert evaluate_accuracy(model, [(x[:15], labels[:15]), (x[15:], soft[15:])]) == pytest.approx(20 / 30)
    assert model.training  # mode restored; eval mode was used (dropout at 0.9 would scramble the argmax)


def test_warmup_cosine_by_hand():
    """teacher.warmup_epochs: linear from lr/W to lr over W steps, then a cosine to 0 over the rest."""
    import math

    from daqkd.teacher import warmup_cosine

    f = [warmup_cosine(t, warmup=4, total=12) for t in range(12)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and f[8] == pytest.approx(0.5) and f[11] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(a >= b for a, b in zip(f[3:], f[4:]))


def test_the_teacher_optimizer_warms_up_and_the_cache_key_of_no_warmup_is_unchanged(tmp_path):
    import dataclasses
    from types import SimpleNamespace

    from daqkd.teacher import TeacherModule, TeacherRecipe, cache_path

    recipe = TeacherRecipe(max_epochs=2, augment="minimal", lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    identity = {"dataset": "fashion_mnist", "model": "resnet20", "seed": 0}
    plain = cache_path(tmp_path, identity, recipe)
    # The key of a recipe without warm-up is the one written before teacher.warmup_epochs existed.
    legacy = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in ("augment", "warmup_epochs")}
    from daqkd.teacher import cache_key
    assert plain.name.endswith(cache_key({**identity, "recipe": legacy}) + ".pt")
    warm = dataclasses.replace(recipe, warmup_epochs=0.5)
    assert cache_path(tmp_path, identity, warm) != plain

    module = TeacherModule(torch.nn.Linear(4, 3), 3, warm)
    module._trainer = SimpleNamespace(estimated_stepping_batches=40)  # 20 steps an epoch: 10 of warm-up
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)
    assert lrs[-1] < 0.001
