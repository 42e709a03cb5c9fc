"""CRD's memory bank is a checkpointed FIFO (daqkd/kd/crd.py)."""
import torch

from daqkd.kd import (
    ContrastiveRepresentation,
    KDBatch,
)

SHAPES = [torch.Size([4, 6, 6]), torch.Size([8, 3, 3]), torch.Size([8])]

def features(seed, b=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, *s, generator=g).relu() for s in SHAPES]

def kd_batch(sf, tf, seed=0, b=6, classes=5):
    g = torch.Generator().manual_seed(100 + seed)
    zs, zt = torch.randn(b, classes, generator=g), torch.randn(b, classes, generator=g)
    return KDBatch(zs, zt, torch.arange(b) % classes, sf, tf, progress=1.0)

def test_crd_bank_is_a_checkpointed_fifo():
    crd = ContrastiveRepresentation(SHAPES, SHAPES, embed_dim=4, bank_size=8)
    assert {"bank_s", "bank_t", "bank_ptr"} <= set(crd.state_dict())
    crd.train()
    crd(kd_batch(features(1), features(2)))
    assert int(crd.bank_ptr) == 6
    crd(kd_batch(features(3), features(4)))
    assert int(crd.bank_ptr) == 4  # wrapped around
