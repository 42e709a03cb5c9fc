"""The whole pipeline on a tiny subset of real Fashion-MNIST (debug=fast), on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import daqkd.run as run
from daqkd.io import CheckpointError, load_weights
from daqkd.models import create_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_everything(make_cfg, tmp_path):
    results = run.train(make_cfg())
    out = tmp_path / "out"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results, default=str))
    scores = on_disk["augment_scores"]
    assert [s["name"] for s in scores] == list(make_cfg().augment.pool)
    for s in scores:
        assert s["m"] == pytest.approx(s["dev"] - s["cmi"]) and s["num_samples"] == 100
    # The recorded test accuracy is what the saved student really scores on the test split.
    cfg = make_cfg()
    dm = run.build_datamodule(cfg)
    teacher = run.build_model(cfg)
    student = run.build_student(cfg, teacher)
    ckpt = torch.load(on_disk["student"]["ckpt"], weights_only=False)["state_dict"]
    student.load_state_dict({k[len("student."):]: v for k, v in ckpt.items() if k.startswith("student.")})
    from daqkd.teacher import evaluate_accuracy

    assert evaluate_accuracy(student, dm.test_dataloader()) == pytest.approx(on_disk["student"]["test_acc"], abs=1e-6)
    assert Path(on_disk["teacher"]["ckpt"]).is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    ranking = (out / "augment_scores.csv").read_text().splitlines()
    assert ranking[0].startswith("name,m,") and len(ranking) == 1 + len(scores)
    summary = (out / "quant_summary.txt").read_text()
    assert summary.count("QuantConv2d") == 18 and "out_scale=" in summary
    assert (out / "csv" / "metrics.csv").is_file()


def test_same_seed_same_scores_and_results_and_teacher_is_cached(make_cfg, tmp_path, monkeypatch):
    overrides = ["paths.cache_dir=" + str(tmp_path / "cache"), "augment.pool=[minimal,trivialaugment,cutmix]"]
    first = run.train(make_cfg(*overrides, f"paths.output_dir={tmp_path}/a"))
    monkeypatch.setattr("daqkd.teacher.train_teacher", lambda *a, **k: pytest.fail("the cached teacher was retrained"))
    second = run.train(make_cfg(*overrides, f"paths.output_dir={tmp_path}/b"))
    assert first["teacher"]["test_acc"] == second["teacher"]["test_acc"]
    strip = lambda r: [{k: v for k, v in s.items() if k != "seconds"} for s in r["augment_scores"]]  # noqa: E731
    assert strip(first) == strip(second)
    assert first["student"]["test_acc"] == second["student"]["test_acc"]
    assert first["student"]["test_loss"] == second["student"]["test_loss"]


class CrashMidEpoch(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 2:
            raise RuntimeError("simulated crash")


class QuantizerStateAtStart(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        q = pl_module.student.layer2[0].conv1
        self.__dict__.setdefault("seen", (trainer.current_epoch, float(q.act_quantizer.upper), float(q.weight_quantizer.delta)))


def test_resume_restores_quantizer_state_without_recalibrating(make_cfg, tmp_path, monkeypatch):
    over = ["trainer.max_epochs=2", "augment.pool=[minimal,trivialaugment]", "trainer.limit_val_batches=1"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run.train(make_cfg(*over), extra_callbacks=[CrashMidEpoch()])
    saved = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 0
    saved_upper = float(saved["state_dict"]["student.layer2.0.conv1.act_quantizer.upper"])

    monkeypatch.setattr(run, "calibrate", lambda *a: pytest.fail("re-calibrated on resume"))
    monkeypatch.setattr("daqkd.metric.callback.score_augmentations", lambda *a, **k: pytest.fail("re-scored on resume"))
    probe = QuantizerStateAtStart()
    results = run.train(make_cfg(*over, "ckpt_path=last"), extra_callbacks=[probe])
    epoch, upper, delta = probe.seen
    assert epoch == 1 and upper == pytest.approx(saved_upper)  # the learned interval, not a fresh calibration
    assert delta != pytest.approx(1e-3)  # the δ of epoch 1's estimate, carried on
    assert results["student"]["epochs"] == 2


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


def test_given_teacher_and_corrupt_cache(make_cfg, tmp_path):
    cfg = make_cfg("paths.cache_dir=" + str(tmp_path / "cache"))
    dm = run.build_datamodule(cfg)
    first = run.build_teacher(cfg, dm)
    # A Lightning-style checkpoint of one's own is accepted through teacher.ckpt.
    own = tmp_path / "mine.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in first.model.state_dict().items()}}, own)
    given = run.build_teacher(make_cfg(f"teacher.ckpt={own}"), dm)
    assert given.source == "given" and given.test_acc == first.test_acc
    # A torn cache file is moved aside and the teacher retrained, not a crash hours later.
    Path(first.ckpt).write_bytes(b"\x00" * 10)
    again = run.build_teacher(cfg, dm)
    assert again.source == "trained" and Path(first.ckpt).with_suffix(".corrupt").is_file()
    assert load_weights(create_model("resnet20", 10, 1), again.ckpt) is not None


def test_nan_loss_stops_with_a_clear_error(make_cfg):
    cfg = make_cfg()
    dm = run.build_datamodule(cfg)
    teacher = run.build_teacher(cfg, dm).model
    loss, *_ = run.build_kd(cfg, None, None, dm)
    module = run.QATKDModule(
        run.build_student(cfg, teacher), teacher, loss, 10, run.instantiate(cfg.optim.optimizer), cfg.optim.quant_lr,
    )
    x = torch.full((4, 1, 28, 28), float("nan"))
    with pytest.raises(FloatingPointError, match="Lower the learning rate"):
        module.training_step((x, torch.zeros(4, dtype=torch.long)), 0)


def _cli(args, cwd):
    env = {**os.environ, "DAQKD_ROOT": str(cwd)}
    return subprocess.run([sys.executable, "-m", "daqkd.run", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_from_another_directory(tmp_path):
    ok = _cli(["bits=4", "quantizer=ewgs", "augment=auto", "--cfg", "job"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "w: 4" in ok.stdout and "name: ewgs" in ok.stdout
    bad = _cli(["quantizer=nope", "--cfg", "job"], tmp_path)
    assert bad.returncode != 0 and "ewgs" in bad.stderr and "fp" in bad.stderr


def test_teacher_command_trains_and_caches(tmp_path):
    env = {**os.environ, "DAQKD_ROOT": str(tmp_path)}
    args = [sys.executable, "-m", "daqkd.teacher", "debug=fast", "trainer.enable_progress_bar=false"]
    first = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    cached = list((tmp_path / ".cache" / "teachers").glob("fashion_mnist_resnet20_*.pt"))
    assert len(cached) == 1
    weights = torch.load(cached[0], weights_only=True)["state_dict"]
    assert not torch.equal(weights["fc.weight"], create_model("resnet20", 10, 1).fc.weight)  # trained, not an init
    stamp = cached[0].stat().st_mtime_ns
    second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not trained and written again


class HeadsAtStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.embed = pl_module.feature_loss.embed_s.weight.detach().clone()


def test_feature_kd_heads_are_trained_and_checkpointed(make_cfg, tmp_path):
    # 512 training images fill a 100-slot bank 5 times and leave the pointer at 12 (a wrap cannot hide a fill);
    # the δ estimate's 3 batches must not enqueue (they would move it to 4).
    probe = HeadsAtStart()
    run.train(make_cfg("kd=crd", "kd.feature.bank_size=100", "augment=minimal", "metric.score_fixed=false"),
              extra_callbacks=[probe])
    state = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert int(state["feature_loss.bank_ptr"]) == 512 % 100  # filled by training steps only
    assert not torch.equal(state["feature_loss.embed_s.weight"], probe.embed)  # the head was optimised
