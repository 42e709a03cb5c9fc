"""Freeze a run's student and write every form of it (student_int.pt, student_weights.npz,
student.onnx, student_int8.onnx), each checked against the training-time model on the test set.

examples:
  python -m daqkd.export outputs/train/2026-11-22_19-24-02            # a run folder
  python -m daqkd.export path/to/checkpoints/last.ckpt --bench        # + ONNX Runtime speed and size, as a table

README, "Exporting a student", says what each file holds and how to load it."""
from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from daqkd.errors import CheckpointError, ExportError, reported_as_one_line
from daqkd.export.contract import metadata, stamp
from daqkd.export.int8 import export_int8_onnx, fused_ops
from daqkd.export.qdq import export_onnx
from daqkd.export.runtime import compare_bench, onnx_session, predictions
from daqkd.export.weights import save_weights
from daqkd.io import atomic_torch_save, atomic_write_json, read_checkpoint
from daqkd.quant.convert import freeze
from daqkd.result import RunResult

log = logging.getLogger(__name__)


def locate_run(target: str | Path) -> tuple[dict, Path]:
    """(the run's resolved config, the student checkpoint) from a run folder or one of its .ckpt files."""
    target = Path(target)
    if not target.exists():
        raise CheckpointError(f"{target} does not exist; pass a run folder (with results.json) or a .ckpt inside one")
    if target.is_file() and target.suffix != ".ckpt":
        raise CheckpointError(f"{target} is not a checkpoint (.ckpt); pass the run folder, e.g. python -m daqkd.export {target.parent}")
    folder = target if target.is_dir() else (target.parent.parent if target.parent.name == "checkpoints" else target.parent)
    results = folder / "results.json"
    config, run = None, None
    if results.is_file():
        run = RunResult.load(results)
        config = run.config or None
    elif (folder / ".hydra" / "config.yaml").is_file():
        config = OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "config.yaml"), resolve=False)
    if config is None:
        raise CheckpointError(f"no config next to {target}: expected {results} or {folder}/.hydra/config.yaml (pass the run folder "
                              "that daqkd.run wrote)")
    if target.is_dir():
        ckpt = None
        if run is not None and run.student is not None:
            ckpt = run.student.ckpt
        # The checkpoint results.json names, looked up in this folder: a copied or moved run exports its own
        # checkpoint, never the original's (the path recorded is where the run was written).
        own = folder / "checkpoints" / Path(ckpt).name if ckpt else None
        if own is not None and own.is_file():
            ckpt = own
        else:
            if ckpt:
                log.warning("%s does not hold %s, the student results.json names; exporting checkpoints/last.ckpt",
                            folder / "checkpoints", Path(ckpt).name)
            ckpt = folder / "checkpoints" / "last.ckpt"
    else:
        ckpt = target
    if not ckpt.is_file():
        raise CheckpointError(f"no student checkpoint in {folder}/checkpoints; did the run finish? (python -m daqkd.run ... ckpt_path=last)")
    return config, ckpt


def load_student(config: dict, ckpt: Path) -> tuple[nn.Module, nn.Module]:
    """(the training-time student, the teacher architecture with the run's teacher weights) of a run.
    A student trained with quantizer.deploy=int8 comes with its integer forward installed
    (``daqkd.export.deployed.Int8Forward``, as ``student.int8``): it is what was trained and tested."""
    from daqkd import build
    from daqkd.io import load_weights

    cfg = OmegaConf.create(config)
    teacher = build.build_model(cfg)
    teacher_ckpt = (config.get("teacher") or {}).get("ckpt")
    student = build.build_student(cfg, teacher).eval()
    state = read_checkpoint(ckpt)
    weights = {k[len("student."):]: v for k, v in state.get("state_dict", {}).items() if k.startswith("student.")}
    if not weights:
        raise CheckpointError(f"{ckpt} holds no student weights (keys 'student.*'); pass a checkpoint written by daqkd.run")
    missing, unexpected = student.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt} does not fit the run's student ({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
                              f"{(missing or unexpected)[:3]}); was it written by another model or quantizer config?")
    if teacher_ckpt and Path(teacher_ckpt).is_file():
        load_weights(teacher, teacher_ckpt)
    deployed = state.get("deploy_int8")
    if deployed:
        from daqkd.export.deployed import Int8Forward

        student.int8 = Int8Forward(student, deployed["ranges"])
    return student, teacher.eval()


def share_equal(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of positions where two prediction (or label) vectors agree."""
    return float((a == b).float().mean())


def export(target: str | Path, out_dir: str | Path | None = None, onnx: bool = True, bench: bool = False,
           test_subset: int | None = None) -> dict:
    """Freeze and export the student of a run; returns (and writes to export.json) what was checked."""
    from daqkd import build

    config, ckpt = locate_run(target)
    out = Path(out_dir) if out_dir else ckpt.parent.parent / "export"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot write the export into {out} ({e.strerror or e}); choose a folder you can write to with --out") from None
    student, teacher = load_student(config, ckpt)
    frozen, info = freeze(student)
    cfg = OmegaConf.create(config)
    dm = build.build_datamodule(cfg)
    if test_subset:
        dm.test_subset = test_subset
    dm.setup("test")
    shape = (dm.in_channels, dm.image_size, dm.image_size)
    loader = dm.test_dataloader()
    reference = predictions(student, loader)
    props = dict(dataset=cfg.dataset.name, model=cfg.model.name, quantizer=cfg.quantizer.name, bits_w=cfg.bits.w, bits_a=cfg.bits.a,
                 mean=dm.mean, std=dm.std, in_channels=dm.in_channels, image_size=dm.image_size, classes=dm.class_names)
    report = {"checkpoint": str(ckpt), "bits_w": cfg.bits.w, "bits_a": cfg.bits.a, "quantizer": cfg.quantizer.name,
              "deploy": "int8" if getattr(student, "int8", None) is not None else "none", **info,
              "test_images": len(reference)}
    report["agreement_frozen"] = share_equal(predictions(frozen, loader), reference)
    atomic_torch_save(frozen, out / "student_int.pt")
    save_weights(frozen, out / "student_weights.npz")
    report["files"] = {"frozen": str(out / "student_int.pt"), "weights": str(out / "student_weights.npz")}
    if onnx:
        export_onnx(frozen, out / "student.onnx", shape)
        stamp(out / "student.onnx", metadata(**props, form="exact (QDQ)"))
        report["files"]["onnx"] = str(out / "student.onnx")
        for key, fused in (("agreement_onnx", False), ("agreement_onnx_fused", True)):
            report[key] = share_equal(predictions(onnx_session(out / "student.onnx", fused), loader), reference)
        trained = getattr(student, "int8", None)  # deploy=int8: the ranges it was trained with, and a check before writing
        partial = out / "student_int8.onnx.partial"
        try:
            if trained is None and (cfg.quantizer.get("deploy") or "none") == "int8":
                raise ExportError(f"{ckpt.name} was saved before quantizer.deploy=int8 took over (quantizer.freeze_bn_epoch="
                                  f"{cfg.quantizer.get('freeze_bn_epoch')}), so it holds no integer model to write; export a checkpoint saved "
                                  "from that epoch on (python -m daqkd.export <run>/checkpoints/<that .ckpt>)")
            int8 = export_int8_onnx(frozen, dm.calibration_batch(512), partial, ranges=trained.ranges if trained is not None else None)
            if trained is not None:
                from daqkd.export.deployed import check_export

                images = torch.cat([x for x, _ in itertools.islice(loader, -(-256 // (loader.batch_size or 256)))])[:256]
                deploy_check = check_export(partial, images)
            partial.replace(out / "student_int8.onnx")
            int8["path"] = str(out / "student_int8.onnx")
        except ExportError as e:
            (out / "student_int8.onnx").unlink(missing_ok=True)  # an earlier export's file would no longer match export.json
            report["int8"] = {"skipped": str(e)}
        finally:
            partial.unlink(missing_ok=True)
        if "skipped" not in report.get("int8", {}):
            stamp(out / "student_int8.onnx", metadata(**props, form="integer kernels (int8)"))
            report["files"]["int8"] = int8["path"]
            labels = torch.cat([y for _, y in loader])
            int8_preds = predictions(onnx_session(out / "student_int8.onnx", fused=True), loader)
            report["int8"] = {"quantized_convs": int8["quantized_convs"], "ort_ops": fused_ops(out / "student_int8.onnx"),
                              "agreement": share_equal(int8_preds, reference),
                              "test_acc": share_equal(int8_preds, labels), "student_test_acc": share_equal(reference, labels)}
            if trained is not None:
                report["int8"]["deploy_check"] = deploy_check
    if bench and onnx:  # only the forms this export wrote (main refuses --bench with --no-onnx)
        export_onnx(teacher, out / "teacher_fp.onnx", shape)
        stamp(out / "teacher_fp.onnx", metadata(**{**props, "quantizer": "fp", "bits_w": 32, "bits_a": 32}, form="FP teacher"))
        report["files"]["teacher_onnx"] = str(out / "teacher_fp.onnx")
        forms = {"teacher_fp": (out / "teacher_fp.onnx", False), "student": (out / "student.onnx", False),
                 "student_fused": (out / "student.onnx", True)}
        if "int8" in report["files"]:
            forms["student_int8"] = (out / "student_int8.onnx", True)
        report["bench"] = compare_bench(forms, shape)
    fp_bytes = sum(p.numel() * 4 for p in teacher.parameters())
    report["bytes"] = {"teacher_fp32_weights": fp_bytes, **{k: Path(v).stat().st_size for k, v in report["files"].items()}}
    atomic_write_json(out / "export.json", report)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m daqkd.export", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="a run folder written by daqkd.run, or a .ckpt inside one")
    parser.add_argument("--out", help="where to write (default: <run folder>/export)")
    parser.add_argument("--no-onnx", action="store_true", help="only the frozen PyTorch module")
    parser.add_argument("--bench", action="store_true", help="ONNX Runtime batch-1 latency, batch-64 throughput and size, FP vs student")
    parser.add_argument("--test-subset", type=int, help="check agreement on this many test images (default: all)")
    args = parser.parse_args(argv)
    if args.bench and args.no_onnx:
        parser.error("--bench times the ONNX forms, which --no-onnx does not write; drop one of them")
    if args.test_subset is not None and args.test_subset < 1:
        parser.error(f"--test-subset {args.test_subset}: give a number of test images ≥ 1, or leave it out for all of them")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    with reported_as_one_line():
        report = export(args.target, args.out, onnx=not args.no_onnx, bench=args.bench, test_subset=args.test_subset)
    print(summary(report))


def summary(report: dict) -> str:
    """What ``export`` wrote and checked, as lines and (with ``--bench``) a table; export.json has all."""
    files = report["files"]
    deployed = report.get("deploy") == "int8"
    lines = [f"wrote {', '.join(Path(f).name for f in files.values())} into {Path(files['frozen']).parent}",
             f"agreement with the training-time student on {report['test_images']} test images"
             + (" (trained with quantizer.deploy=int8, the student is the integer model: the exact forms, frozen and student.onnx, "
                "leave out its roundings)" if deployed else "") + f": frozen {report['agreement_frozen']:.2%}"
             + (f", student.onnx {report['agreement_onnx']:.2%} (fused {report['agreement_onnx_fused']:.2%})" if "agreement_onnx" in report else "")]
    sizes = report["bytes"]
    lines.append("sizes: " + ", ".join(f"{Path(files[k]).name} {sizes[k] / 1e6:.2f} MB" for k in files if k in sizes)
                 + f" (the teacher's fp32 weights: {sizes['teacher_fp32_weights'] / 1e6:.2f} MB)")
    int8 = report.get("int8") or {}
    if "skipped" in int8:
        lines.append(f"student_int8.onnx not written: {int8['skipped']}")
    elif int8:
        lines.append(f"student_int8.onnx: agreement {int8['agreement']:.2%}, test accuracy {int8['test_acc']:.2%} "
                     f"(student {int8['student_test_acc']:.2%}), {int8['quantized_convs']} quantized convs")
        check = int8.get("deploy_check")
        if check:
            images = check.get("images", 256)
            if "int16_saturation_from" in check:
                lines.append(f"student_int8.onnx is the trained integer model, but ONNX Runtime on this CPU does not compute it exactly: from "
                             f"{check['int16_saturation_from']} on, its u8×s8 kernel saturates int16 (a CPU without VNNI, 8-bit layers), and "
                             f"{check['differ']:,} of {check['integers']:,} integers on {images} test images differ; on a CPU with VNNI it computes "
                             "the trained integers")
            else:
                lines.append(f"student_int8.onnx computes the trained integers: {check['integers']:,} compared on {images} test images, "
                             f"{check['differ']:,} differ away from a rounding tie, {check['ties']:,} at ties")
    bench = report.get("bench")
    if bench:
        fp = bench["teacher_fp"]
        lines += ["", "| model (ONNX Runtime, CPU) | file (MB) | batch-1 latency (ms) | batch-64 throughput (img/s) | × teacher's throughput |",
                  "| --- | --- | --- | --- | --- |"]
        names = {"teacher_fp": "FP teacher", "student": "student.onnx (exact)", "student_fused": "student.onnx, QDQ fused",
                 "student_int8": "student_int8.onnx (integer kernels)"}
        for key, name in names.items():
            if key in bench:
                r = bench[key]
                lines.append(f"| {name} | {r['size_bytes'] / 1e6:.2f} | {r['latency_b1_ms']:.2f} | {r['throughput_b64_img_s']:,.0f} | "
                             f"{r['throughput_b64_img_s'] / fp['throughput_b64_img_s']:.2f} |")
    lines.append(f"details: {Path(files['frozen']).parent / 'export.json'}")
    return "\n".join(lines)
