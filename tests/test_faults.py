"""The fault table: every bad value and every damaged input ends in one line that names the key or
the file and the fix, a non-zero exit, no traceback and no results.json (daqkd/errors.py)."""
import gzip
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakedata import write_cifar, write_image

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def run_cli(tmp_path, *args, module="daqkd.run"):
    env = {**os.environ, "DAQKD_ROOT": str(tmp_path)}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("DAQKD_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", module, "debug=fast", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


BAD_VALUES = [
    ("dataset.datamodule.batch_size=0", "dataset.datamodule.batch_size=0"),
    ("dataset.datamodule.eval_batch_size=-3", "dataset.datamodule.eval_batch_size=-3"),
    ("dataset.datamodule.num_workers=-1", "dataset.datamodule.num_workers=-1"),
    ("dataset.datamodule.val_size=1.5", "dataset.datamodule.val_size=1.5"),
    ("dataset.datamodule.train_subset=-5", "dataset.datamodule.train_subset=-5"),
    ("optim.optimizer.lr=-1", "optim.optimizer.lr=-1"),
    ("optim.quant_lr=-1e-5", "optim.quant_lr=-1e-05"),
    ("teacher.lr=0", "teacher.lr=0"),
    ("teacher.momentum=1.5", "teacher.momentum=1.5"),
    ("teacher.max_epochs=0", "teacher.max_epochs=0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0"),
    ("seed=abc", "seed='abc'"),
    ("bits.w=5", "bits.w=5"),
    ("kd.temperature=0", "kd.temperature=0"),
    ("kd.alpha=-2", "kd.alpha=-2"),
    ("metric.num_samples=5", "metric.num_samples=5"),
    ("metric.batch_size=0", "metric.batch_size=0"),
    ("metric.selector=best", "metric.selector=best"),
    ("quantizer.calibration_size=0", "quantizer.calibration_size=0"),
    ("quantizer.callback.probes=0", "quantizer.callback.probes=0"),
    ("augment.pool=[minimal,nosuch]", "augment.pool: 'nosuch' is not a DA"),
    ("teacher.augment=nosuch", "teacher.augment: 'nosuch' is not a DA"),
    ("augment.pool=[]", "augment.pool"),
    ("metric.chunk=75", "metric.chunk=75 is not a multiple of metric.batch_size=50"),
    ("dataset.datamodule.batch_size=1", "dataset.datamodule.batch_size=1"),
    ("teacher.batch_size=1", "teacher.batch_size=1"),
    ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path=/nonexistent/last.ckpt"),
]


def assert_clean_failure(p, tmp_path, *names):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr[-2000:]
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("daqkd: error:")]
    assert len(line) == 1, p.stderr[-2000:]
    for name in names:
        assert name in line[0], line[0]
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.parametrize("override,named", BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_key(tmp_path, entry_point, override, named):
    """The real entry point (Hydra included), in this process."""
    p = entry_point(tmp_path, "debug=fast", override)
    assert_clean_failure(p, tmp_path, named)
    assert "e.g." in p.stderr or "choose" in p.stderr or "allowed" in p.stderr or "does not exist" in p.stderr


@pytest.mark.slow  # a fresh Python process
def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    p = run_cli(tmp_path, "dataset.datamodule.batch_size=0")
    assert p.returncode == 2
    assert_clean_failure(p, tmp_path, "dataset.datamodule.batch_size=0", "e.g. dataset.datamodule.batch_size=128")


@pytest.mark.slow  # a fresh Python process
def test_the_traceback_comes_back_on_request(tmp_path):
    env = {**os.environ, "DAQKD_ROOT": str(tmp_path), "DAQKD_TRACEBACK": "1"}
    p = subprocess.run([sys.executable, "-m", "daqkd.run", "debug=fast", "seed=abc"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Traceback" in p.stderr + p.stdout


def fmnist_copy(tmp_path):
    folder = tmp_path / "data" / "fashion_mnist"
    folder.mkdir(parents=True)
    for f in FMNIST.glob("*.gz"):
        shutil.copy(f, folder / f.name)
    return folder


def test_a_truncated_fashion_mnist_file(tmp_path, entry_point):
    folder = fmnist_copy(tmp_path)
    target = folder / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:5000])  # a torn download
    p = entry_point(tmp_path, "debug=fast", "dataset.datamodule.source_options.search_dirs=[]")
    assert_clean_failure(p, tmp_path, str(target), "delete it and fetch it again")


def test_a_bad_cifar_pickle(tmp_path, entry_point):
    folder = write_cifar(tmp_path / "data", "cifar10", n_per_file=20)
    (folder / "data_batch_3").write_bytes(pickle.dumps({"nothing": 1})[:-3])
    p = entry_point(tmp_path, "debug=fast", "dataset=cifar10", "dataset.datamodule.download=false", "dataset.datamodule.val_size=10",
                "dataset.datamodule.train_subset=null")
    assert_clean_failure(p, tmp_path, "data_batch_3", "fetch it again")


def test_a_corrupt_teacher_checkpoint(tmp_path, entry_point):
    bad = tmp_path / "teacher.ckpt"
    bad.write_bytes(b"\x00not a checkpoint")
    p = entry_point(tmp_path, "debug=fast", f"teacher.ckpt={bad}")
    assert_clean_failure(p, tmp_path, str(bad), "corrupt")


def test_missing_data(tmp_path, entry_point):
    p = entry_point(tmp_path, "debug=fast", "dataset=cifar100", "dataset.datamodule.download=false")
    assert_clean_failure(p, tmp_path, "cifar-100-python", "download=true")


def test_an_image_folder_with_an_empty_class(tmp_path, entry_point):
    for c in ("cat", "dog"):
        for k in range(6):
            write_image(tmp_path / "imgs" / "train" / c / f"{k}.png", size=16, seed=k)
    (tmp_path / "imgs" / "train" / "owl").mkdir()
    p = entry_point(tmp_path, "debug=fast", "dataset=imagefolder", "dataset.num_classes=3",
                    f"dataset.datamodule.source_options.folder={tmp_path}/imgs")
    assert_clean_failure(p, tmp_path, "owl", "cat 6, dog 6, owl 0")


def test_too_few_images_for_the_metric_warns_with_counts(make_cfg, caplog):
    from daqkd import build

    dm = build.build_datamodule(make_cfg("dataset.datamodule.train_subset=40"))
    with caplog.at_level("WARNING"):
        idx = dm.metric_indices(2000, seed=0)
    assert len(idx) == 40
    assert "metric.num_samples=2000, but the training split has 40 images" in caplog.text
    assert "fewer than 5 images of some classes" in caplog.text


def test_gzip_truncation_is_detected_by_the_reader(tmp_path):
    from daqkd.data import read_idx
    from daqkd.errors import DataError

    p = tmp_path / "x-idx1-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))
    p.write_bytes(p.read_bytes()[:-12])
    with pytest.raises(DataError, match="x-idx1-ubyte.gz"):
        read_idx(p)
