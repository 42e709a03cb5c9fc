"""Shared fixtures: Hydra configs composed with the real conf/ tree, redirected into tmp folders."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from daqkd.config import config_dir, normalize_overrides


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory):
    """One teacher cache for the whole session, so the smoke teacher is trained once."""
    return tmp_path_factory.mktemp("teacher-cache")


@pytest.fixture
def make_cfg(tmp_path, teacher_cache):
    """make_cfg(*overrides) -> composed config (debug=fast, all outputs under tmp_path)."""

    def make(*overrides: str, fast: bool = True) -> DictConfig:
        base = [
            f"paths.root_dir={tmp_path}",
            f"paths.output_dir={tmp_path}/out",
            f"paths.cache_dir={teacher_cache}",
        ]
        if fast:
            base.insert(0, "debug=fast")
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose("config", overrides=normalize_overrides([*base, *overrides]))

    return make
