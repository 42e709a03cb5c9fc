"""Checkpoint reading and writing: errors that name the problem (daqkd/io.py)."""
import pytest
import torch

from daqkd.io import CheckpointError, load_weights
from daqkd.models import create_model


def test_teacher_checkpoint_errors_name_the_problem(tmp_path):
    good = tmp_path / "r32.pt"
    torch.save(create_model("resnet32", 10, 1).state_dict(), good)
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*layer1\.3"):
        load_weights(create_model("resnet20", 10, 1), good)
    torch.save(create_model("resnet20", 100, 1).state_dict(), good)
    with pytest.raises(CheckpointError, match=r"shape mismatches: fc\.weight"):
        load_weights(create_model("resnet20", 10, 1), good)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(create_model("resnet20", 10, 1), bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(create_model("resnet20", 10, 1), tmp_path / "missing.pt")
