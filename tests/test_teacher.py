"""Teacher resolution: given checkpoints, the cache, training (daqkd/teacher.py)."""
from pathlib import Path

import pytest
import torch

from daqkd import build
from daqkd.io import load_weights
from daqkd.models import create_model


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
    assert load_weights(create_model("resnet20", 10, 1), again.ckpt) is not None
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
