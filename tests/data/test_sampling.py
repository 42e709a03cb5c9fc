"""Seeded, class-stratified sampling and splits (daqkd/data/sampling.py)."""
import torch

from daqkd.data import stratified_indices
from daqkd.data.sampling import split_indices


def test_stratified_indices_keep_class_proportions_and_are_seeded():
    targets = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(targets, 10, seed=3)
    assert torch.bincount(targets[idx]).tolist() == [5, 3, 2]
    assert torch.equal(idx, stratified_indices(targets, 10, seed=3))
    assert not torch.equal(idx, stratified_indices(targets, 10, seed=4))
    keep, held = split_indices(targets, 20, seed=0)
    assert len(set(keep.tolist()) & set(held.tolist())) == 0 and len(keep) + len(held) == 100
    assert torch.bincount(targets[stratified_indices(targets, 3, 0)]).tolist() == [1, 1, 1]


def test_stratified_indices_give_exactly_n_on_imbalanced_classes():
    # Asked 89 of 91 with a one-image class: the old rule gave the singleton a quota of 2 (a clamp to 1
    # plus a remainder) and came out one short. Now: every size, every class kept, no index twice.
    targets = torch.tensor([0] * 45 + [1] * 45 + [2])
    idx = stratified_indices(targets, 89, 0)
    assert len(idx) == 89 and len(set(idx.tolist())) == 89 and set(targets[idx].tolist()) == {0, 1, 2}
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        counts = torch.randint(1, 30, (int(torch.randint(2, 12, (1,), generator=gen)),), generator=gen)
        targets = torch.cat([torch.full((int(c),), i) for i, c in enumerate(counts)])
        n = int(torch.randint(1, len(targets) + 1, (1,), generator=gen))
        idx = stratified_indices(targets, n, 0)
        assert len(idx) == n and len(set(idx.tolist())) == n, (counts.tolist(), n)
        if n >= len(counts):
            assert len(torch.unique(targets[idx])) == len(counts)
