"""The LightningModule: the loss it trains on, NaN losses stop with a clear error (daqkd/module.py)."""
import pytest
import torch


def test_nan_loss_stops_with_a_clear_error(make_cfg, make_module):
    _, module = make_module(make_cfg())
    x = torch.full((4, 1, 28, 28), float("nan"))
    with pytest.raises(FloatingPointError, match="Lower the learning rate"):
        module.training_step((x, torch.zeros(4, dtype=torch.long)), 0)


def test_teacher_stays_frozen_in_eval_mode(make_cfg, make_module, fmnist_batch):
    _, module = make_module(make_cfg())
    module.train()
    assert module.student.training and not module.teacher.training
    loss, _, _ = module.compute_loss(fmnist_batch)
    loss.backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
