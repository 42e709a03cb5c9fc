"""The one AugmentPipeline: seeded per-image draws, shared by scoring and training (daqkd/augment/pipeline.py)."""

import torch
from fakedata import make_fmnist


def test_draws_do_not_depend_on_workers_or_touch_the_global_rng(tmp_path, make_datamodule):
    make_fmnist(tmp_path / "fashion_mnist", n_train=200, n_test=50)
    kw = dict(val_size=40, batch_size=16, source_options={"search_dirs": []})
    dms = [make_datamodule("fashion_mnist", tmp_path, 10, 1, 28, num_workers=w, **kw) for w in (0, 2)]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    batches = [next(iter(dm.train_loader("trivialaugment+cutmix"))) for dm in dms]
    assert torch.equal(torch.get_rng_state(), state)  # seeding each image's draws leaves the global stream alone
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
