"""Shared fixtures: Hydra configs composed with the real conf/ tree (outputs redirected into tmp
folders), datamodules, a trained smoke teacher, a real batch, and the module a run builds."""
from __future__ import annotations

import os

import pytest
import torch
from omegaconf import DictConfig

from daqkd import build
from daqkd.config import compose_config
from daqkd.data import ImageDataModule

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test runs one worker per core: one thread each, subprocesses too
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


# The tests' model: ResNet-8, the CIFAR ResNet with one block per stage, has every kind of layer the
# default ResNet-20 has (stem, plain and downsampling blocks, residual adds, pooling, classifier) at a
# third of its compute; tests that need a deeper or other model name it (model=...).
TEST_MODEL = "model=resnet8"


def compose_cfg(root, cache, *overrides: str, fast: bool = True) -> DictConfig:
    base = [f"paths.root_dir={root}", f"paths.output_dir={root}/out", f"paths.cache_dir={cache}"]
    if fast:
        base.insert(0, "debug=fast")
        if not any(o.startswith(("model=", "experiment=")) for o in overrides):
            base.insert(1, TEST_MODEL)
    return compose_config([*base, *overrides])


@pytest.fixture
def entry_point(monkeypatch, capfd):
    """entry_point(root, *args, module="daqkd.run") -> CompletedProcess: ``python -m module *args`` from
    ``root`` (DAQKD_ROOT=root), run in this process through the module's real main(), Hydra included,
    with its exit code, stdout and stderr (file descriptors, so child processes' output too); seconds
    faster than a fresh Python. What a run leaves in the process (Lightning's PL_* seed variables, the
    root logger's handlers) is put back. Tests of what only a fresh process shows (an exit status set by
    the interpreter, signals, a fresh import elsewhere) start one instead."""
    import importlib
    import inspect
    import logging
    import subprocess
    import sys

    def run(root, *args: str, module: str = "daqkd.run") -> subprocess.CompletedProcess:
        main = importlib.import_module(module).main
        root_logger = logging.getLogger()
        handlers, level = list(root_logger.handlers), root_logger.level
        with monkeypatch.context() as m:
            m.chdir(root)
            m.setenv("DAQKD_ROOT", str(root))
            for name in ("HYDRA_FULL_ERROR", "DAQKD_TRACEBACK", "PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
                m.setenv(name, "")  # recorded, so whatever the run sets is put back when the context ends
                m.delenv(name)
            m.setattr(sys, "argv", [module, *args])
            capfd.readouterr()
            takes_argv = any(p.default is inspect.Parameter.empty for p in inspect.signature(main).parameters.values())
            try:
                code = main(list(args)) if takes_argv else main()
            except SystemExit as e:
                code = e.code
            finally:
                root_logger.handlers[:], root_logger.level = handlers, level
            out, err = capfd.readouterr()
        return subprocess.CompletedProcess([module, *args], code or 0, out, err)

    return run


# A run of the whole pipeline at the least size that still exercises every stage: two training steps,
# one validation batch, 64 test images, 20 images scored per DA, no student passes in the scoring.
TINY = ["debug=fast", TEST_MODEL, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "dataset.datamodule.test_subset=64",
        "metric.num_samples=20", "metric.batch_size=10", "metric.chunk=10", "metric.score_student=false"]


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory):
    """One teacher cache for the whole session, shared by the xdist workers (the cache's file lock lets
    one train a teacher while the others wait), so the smoke teacher is trained once."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "teacher-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def subprocess_env(tmp_path, teacher_cache):
    """The environment of a ``python -m daqkd...`` subprocess run from ``tmp_path``: its own root, the
    session's teacher cache (tests of the cache itself leave DAQKD_CACHE out), no traceback flags."""
    env = {**os.environ, "DAQKD_ROOT": str(tmp_path), "DAQKD_CACHE": str(teacher_cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("DAQKD_TRACEBACK", None)
    return env


@pytest.fixture
def make_cfg(tmp_path, teacher_cache):
    """make_cfg(*overrides, fast=True) -> composed config (debug=fast unless fast=False; outputs under tmp_path)."""
    return lambda *overrides, fast=True: compose_cfg(tmp_path, teacher_cache, *overrides, fast=fast)


@pytest.fixture(scope="session")
def session_cfg(tmp_path_factory, teacher_cache):
    """Like make_cfg, for session- and module-scoped fixtures."""
    root = tmp_path_factory.mktemp("session")
    return lambda *overrides, fast=True: compose_cfg(root, teacher_cache, *overrides, fast=fast)


@pytest.fixture(scope="session")
def fast_teacher(session_cfg):
    """The debug=fast teacher (one epoch on 512 images), trained once per session and cached."""
    cfg = session_cfg()
    return build.build_teacher(cfg, build.build_datamodule(cfg)).model


@pytest.fixture(scope="session")
def fmnist_batch(session_cfg):
    """The first training batch of debug=fast under the minimal DA: 64 real Fashion-MNIST images."""
    return next(iter(build.build_datamodule(session_cfg()).train_loader("minimal")))


@pytest.fixture
def make_module():
    """make_module(cfg, teacher=None) -> (datamodule, QATKDModule) exactly as run.train builds them
    (a random teacher unless one is given)."""

    def make(cfg, teacher=None):
        dm = build.build_datamodule(cfg)
        torch.manual_seed(0)
        teacher = teacher if teacher is not None else build.build_model(cfg).eval()
        student = build.build_student(cfg, teacher, dm)
        return dm, build.build_module(cfg, student, teacher, dm)

    return make


@pytest.fixture
def make_datamodule():
    """make_datamodule(name, root, num_classes, in_channels, image_size, **overrides): an ImageDataModule
    with small test-friendly settings (no workers, small batches)."""

    def make(name, root, num_classes, in_channels, image_size, **kw):
        settings = dict(mean=[0.5] * in_channels, std=[0.25] * in_channels, padding=2, flip=True, val_size=10,
                        batch_size=8, eval_batch_size=16, num_workers=0, seed=0)
        settings.update(kw)
        return ImageDataModule(name, str(root), num_classes, in_channels, image_size, **settings)

    return make


@pytest.fixture
def first_train_batch():
    """first_train_batch(cfg, augment) -> the first training batch the config's datamodule makes under ``augment``."""
    return lambda cfg, augment: next(iter(build.build_datamodule(cfg).train_loader(augment)))


@pytest.fixture
def inner_conv_grad():
    """inner_conv_grad(module, batch) -> the gradient of the training loss on an inner student conv (layer2.0.conv1)."""

    def grad(module, batch):
        module.student.zero_grad()
        loss, _, _ = module.compute_loss(batch)
        loss.backward()
        return module.student.layer2[0].conv1.weight.grad.clone()

    return grad


@pytest.fixture(scope="session")
def quantizer_factories():
    """name -> (weight factory, activation factory, output scale) for every quantizer, as its YAML pairs them."""
    import functools

    from daqkd.quant import DoReFaQuantizer, EWGSQuantizer, LSQQuantizer, PACTQuantizer

    ewgs = functools.partial(EWGSQuantizer, delta_mode="fixed")
    return {
        "ewgs": (ewgs, ewgs, True),
        "pact": (DoReFaQuantizer, PACTQuantizer, True),
        "lsq": (LSQQuantizer, LSQQuantizer, False),
        "dorefa": (DoReFaQuantizer, DoReFaQuantizer, True),
    }


@pytest.fixture(scope="session")
def briefly_trained(session_cfg):
    """briefly_trained(model_name) -> that model trained in full precision for a few dozen steps on
    real Fashion-MNIST (once per session), in eval mode."""
    import torch.nn.functional as F

    from daqkd.models import create_model

    dm = build.build_datamodule(session_cfg())
    trained = {}

    def get(name: str, steps: int = 60):
        if name not in trained:
            torch.manual_seed(0)
            model = create_model(name, 10, 1, image_size=28)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            batches = iter(dm.train_loader("minimal"))
            model.train()
            for _ in range(steps):
                try:
                    x, y = next(batches)
                except StopIteration:
                    batches = iter(dm.train_loader("minimal"))
                    x, y = next(batches)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            trained[name] = model.eval()
        return trained[name]

    return get
