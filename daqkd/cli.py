"""``daqkd <command> [arguments]``: one console command for every entry point. Each subcommand runs
``python -m daqkd.<module>`` in this process, as ``__main__`` with the same arguments, so it is the
same code path (Lightning's DDP launcher, which restarts the command line for each rank, restarts
``python -m daqkd.run ...``). Arguments that start with an override (``daqkd bits=4``) go to ``run``."""
from __future__ import annotations

import importlib.util
import runpy
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
    "download": ("daqkd.data.download", "fetch a data set into data/ (needs a network once)", "daqkd download fashion_mnist"),
    "bench": ("daqkd.bench", "speed figures against their targets (bench/bench.json)", "daqkd bench --quick"),
    "bench-export": ("daqkd.bench_export", "the exported forms' speed and size against the FP teacher (bench/export.json)",
                     "daqkd bench-export --quick"),
    "budget-grid": ("daqkd.budget_grid", "a grid of DAs × budgets × seeds, a process per job, within a wall-clock budget",
                    "daqkd budget-grid --out grid --minutes 9"),
    "bench-device": ("daqkd.bench_device", "the GPU speed table (step, loader, shared GPU)", "daqkd bench-device"),
}


def version() -> str:
    """``daqkd 0.1.0 (commit 1a2b3c4d5e6f)``: the installed version and the checkout's commit ("+dirty"
    with uncommitted changes; "unknown" outside a git checkout)."""
    from daqkd import __version__
    from daqkd.provenance import git_commit

    commit = git_commit()
    return f"daqkd {__version__} (commit {commit[:12] + ('+dirty' if commit.endswith('+dirty') else '') if commit else 'unknown'})"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["daqkd: quantization-aware training with knowledge distillation, the data augmentation chosen",
             "by the full-precision teacher before training (README.md: the method, the commands, the results).", "",
             "usage: daqkd <command> [arguments]", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what, _) in COMMANDS.items()]
    lines += ["", "daqkd <command> --help says a command's own arguments; each is also python -m daqkd.<module>.",
              "daqkd key=value ... is daqkd run key=value ...; daqkd --version prints the version and commit.", "", "examples:"]
    lines += [f"  {COMMANDS[name][2]}" for name in ("run", "score", "report", "export")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    if "=" in argv[0] or argv[0] in ("-m", "--multirun", "-c", "--cfg", "--info"):
        argv = ["run", *argv]  # Hydra overrides or flags: the run command, as `daqkd` was before it had subcommands
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"daqkd: error: no command {name!r}; the commands are {', '.join(COMMANDS)}, e.g. daqkd run bits=4 "
              "(daqkd --help says what each does)", file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    spec = importlib.util.find_spec(module)
    origin = spec.origin if spec.submodule_search_locations is None else importlib.util.find_spec(f"{module}.__main__").origin
    sys.argv = [origin, *rest]  # what python -m would set: Hydra and Lightning read it
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if isinstance(e.code, str):  # sys.exit("message") prints it, as the interpreter would
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
