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
