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
from daqkd.metric.callback import DAMetricCallback
from daqkd.models import create_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_everything(make_cfg, tmp_path):
    results = run.train(make_cfg())
    out = tmp_path / "out"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["selected_augment"] == results["selected_augment"]
    scores = on_disk["augment_scores"]
    assert [s["name"] for s in scores] == list(make_cfg().augment.pool)
    for s in scores:
        assert set(s) >= {"name", "cmi", "dev", "m", "teacher_acc", "num_samples", "seconds"}
        assert s["m"] == pytest.approx(s["dev"] - s["cmi"]) and s["num_samples"] == 100
    assert on_disk["selected_augment"] == min(scores, key=lambda s: s["m"])["name"]
    assert 0 <= on_disk["teacher"]["test_acc"] <= 1 and Path(on_disk["teacher"]["ckpt"]).is_file()
    st = on_disk["student"]
    assert (st["quantizer"], st["bits_w"], st["bits_a"]) == ("ewgs", 2, 2) and 0 <= st["test_acc"] <= 1
    assert on_disk["config"]["quantizer"]["name"] == "ewgs"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert "augment" in (out / "augment_scores.csv").read_text().splitlines()[0] or "name" in (out / "augment_scores.csv").read_text()
    assert "QuantConv2d" in (out / "quant_summary.txt").read_text()
    assert (out / "csv" / "metrics.csv").is_file()


def test_same_seed_same_scores_and_results_and_teacher_is_cached(make_cfg, tmp_path, teacher_cache):
    overrides = ["paths.cache_dir=" + str(tmp_path / "cache"), "augment.pool=[minimal,trivialaugment,cutmix]"]
    first = run.train(make_cfg(*overrides, f"paths.output_dir={tmp_path}/a"))
    second = run.train(make_cfg(*overrides, f"paths.output_dir={tmp_path}/b"))
    assert first["teacher"]["source"] == "trained" and second["teacher"]["source"] == "cache"
    assert first["teacher"]["test_acc"] == second["teacher"]["test_acc"]
    strip = lambda r: [{k: v for k, v in s.items() if k != "seconds"} for s in r["augment_scores"]]  # noqa: E731
    assert strip(first) == strip(second)
    assert first["student"]["test_acc"] == second["student"]["test_acc"]
    assert first["student"]["test_loss"] == second["student"]["test_loss"]


class CrashMidEpoch(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 2:
            raise RuntimeError("simulated crash")


def test_resume_after_an_interrupted_fit(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg("trainer.max_epochs=2", "augment.pool=[minimal,trivialaugment]")
    build = run.build_callbacks
    monkeypatch.setattr(run, "build_callbacks", lambda *a: [*build(*a), CrashMidEpoch()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run.train(cfg)
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["epoch"] == 0
    saved_upper = saved["state_dict"]["student.layer2.0.conv1.act_quantizer.upper"]
    saved_delta = saved["state_dict"]["student.layer2.0.conv1.weight_quantizer.delta"]
    metric_state = next(v for k, v in saved["callbacks"].items() if "DAMetricCallback" in k)

    # Resume: no re-scoring, no re-calibration, training continues into epoch 1 and finishes.
    monkeypatch.setattr(run, "build_callbacks", build)
    monkeypatch.setattr(DAMetricCallback, "score_all", lambda *a: pytest.fail("re-scored on resume"))
    monkeypatch.setattr(run, "calibrate", lambda *a: pytest.fail("re-calibrated on resume"))
    seen = {}
    orig_fit = L.Trainer.fit

    def fit_and_peek(self, module, *a, **kw):
        class Peek(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                q = pl_module.student.layer2[0].conv1
                seen.setdefault("upper", float(q.act_quantizer.upper))
                seen.setdefault("epoch", trainer.current_epoch)

        self.callbacks.insert(0, Peek())
        return orig_fit(self, module, *a, **kw)

    monkeypatch.setattr(L.Trainer, "fit", fit_and_peek)
    results = run.train(make_cfg("trainer.max_epochs=2", "augment.pool=[minimal,trivialaugment]", "ckpt_path=last"))
    assert seen["epoch"] == 1
    assert seen["upper"] == pytest.approx(float(saved_upper))
    assert results["selected_augment"] == metric_state["selected"]
    assert results["student"]["epochs"] == 2
    assert float(saved_delta) > 0  # EWGS δ was estimated, and is part of the checkpoint


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
    assert "(trained)" in first.stdout + first.stderr
    assert len(list((tmp_path / ".cache" / "teachers").glob("fashion_mnist_resnet20_*.pt"))) == 1
    second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "(cache)" in second.stdout + second.stderr


def test_feature_kd_heads_are_trained_and_checkpointed(make_cfg, tmp_path):
    # 512 training images fill a 100-slot bank 5 times and leave the pointer at 12 (a wrap cannot hide a fill);
    # the δ estimate's 3 batches must not enqueue (they would move it to 4).
    run.train(make_cfg("kd=crd", "kd.feature.bank_size=100", "augment=minimal", "metric.score_fixed=false"))
    state = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert {"feature_loss.embed_s.weight", "feature_loss.bank_t", "feature_loss.bank_ptr"} <= set(state)
    assert int(state["feature_loss.bank_ptr"]) == 512 % 100  # filled by training steps only
    header = (tmp_path / "out" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/feat" in header
