"""``daqkd <command> [arguments]``: one console command for every entry point. Each subcommand runs
the same code as ``python -m daqkd.<module>``, which keeps working, with the same arguments."""
from __future__ import annotations

import importlib
import inspect
import sys

# name: (module, what it does, an example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("daqkd.run", "train, test and record a quantized student (Hydra overrides; -m for a sweep)",
            "daqkd run quantizer=ewgs bits=2 augment=auto"),
    "score": ("daqkd.score", "rank a pool of DAs with the teacher, without training a student",
              "daqkd score pool=reference16"),
    "report": ("daqkd.report", "tables and figures of a sweep's runs (report.md, scatter.png, budget.png)",
               "daqkd report multirun/budget_fashion_mnist_da/teacher_minimal"),
    "export": ("daqkd.export", "freeze a run's student into integer PyTorch and ONNX forms, checked on the test set",
               "daqkd export outputs/train/<date_time> --bench"),
    "teacher": ("daqkd.train_teacher", "train and cache the FP teacher alone (or find it in the cache)",
                "daqkd teacher dataset=cifar100 model=vgg13"),
    "stats": ("daqkd.stats", "a data set's per-channel mean and std, to paste into its YAML",
              "daqkd stats dataset=imagefolder dataset.num_classes=5 dataset.datamodule.source_options.folder=/data/mine"),
    "bench": ("daqkd.bench", "speed figures against their targets (bench/bench.json)", "daqkd bench --quick"),
    "bench-export": ("daqkd.bench_export", "the exported forms' speed and size against the FP teacher (bench/export.json)",
                     "daqkd bench-export --quick"),
    "budget-grid": ("daqkd.budget_grid", "the budget grid within a wall-clock budget (the GPU machine's script)",
                    "daqkd budget-grid --out grid --minutes 9"),
    "bench-device": ("daqkd.bench_device", "the GPU speed table (step, loader, shared GPU)", "daqkd bench-device"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: daqkd <command> [arguments]     (daqkd <command> --help for its own arguments)", "", "commands:"]
    for name, (module, what, example) in COMMANDS.items():
        lines += [f"  {name:<{width}}  {what}", f"  {'':<{width}}  e.g. {example}   (= python -m {module})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"daqkd: error: no command {name!r}; the commands are {', '.join(COMMANDS)}, e.g. daqkd run bits=4 "
              "(daqkd --help says what each does)", file=sys.stderr)
        return 2
    entry = importlib.import_module(COMMANDS[name][0]).main
    sys.argv = [f"daqkd {name}", *rest]  # Hydra's commands read the command line themselves
    takes_argv = any(p.default is inspect.Parameter.empty for p in inspect.signature(entry).parameters.values())
    code = entry(rest) if takes_argv else entry()
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
