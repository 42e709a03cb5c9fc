"""The DA registry: every DA runs on uint8 images, names compose, unknown names fail clearly (daqkd/augment/registry.py)."""
import pytest
import torch

from daqkd.augment import PAPER_POOL, build_augmentation, is_batch_augment, sample_pipeline
from daqkd.registry import get_augment, list_augments


@pytest.mark.parametrize("name", list_augments())
@pytest.mark.parametrize("channels", [1, 3])
def test_every_augmentation_runs_on_uint8(name, channels):
    aug = build_augmentation(name, num_classes=10)
    tf = sample_pipeline(aug.sample, [0.5] * channels, [0.25] * channels, 28, 2, True)
    img = torch.randint(0, 256, (channels, 28, 28), dtype=torch.uint8)
    out = tf(img)
    assert out.shape == (channels, 28, 28) and out.dtype == torch.float32
    if aug.batch is not None:
        x, y = aug.batch(torch.stack([out] * 4), torch.tensor([0, 1, 2, 3]))
        assert y.shape == (4, 10) and torch.allclose(y.sum(1), torch.ones(4))
    assert set(PAPER_POOL) <= set(list_augments())

def test_combined_and_unknown_augmentations():
    aug = build_augmentation("trivialaugment+cutmix", 10)
    assert aug.sample is not None and aug.batch is not None
    with pytest.raises(ValueError, match="unknown augmentation 'nope'"):
        build_augmentation("nope", 10)


@pytest.mark.parametrize("name", [n for n in list_augments() if not is_batch_augment(n) and get_augment(n) is not None])
def test_each_per_image_da_changes_the_images(make_cfg, first_train_batch, name):
    cfg = make_cfg()
    x_da, _ = first_train_batch(cfg, name)
    x_min, _ = first_train_batch(cfg, "minimal")
    changed = (x_da != x_min).flatten(1).any(1).float().mean()
    assert changed > 0.3, f"{name} left {1 - changed:.0%} of the images as minimal made them"
