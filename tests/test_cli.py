"""daqkd <command>: the console command reaches every entry point's own main."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

from daqkd.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def test_every_entry_point_is_a_subcommand():
    # Every module run as python -m daqkd.<name> (it has a __main__ block, or is a package with __main__.py) is one.
    entry_points = {f"daqkd.{p.stem}" for p in (REPO / "daqkd").glob("*.py") if 'if __name__ == "__main__"' in p.read_text()}
    entry_points |= {f"daqkd.{p.parent.name}" for p in (REPO / "daqkd").glob("*/__main__.py")}
    assert entry_points - {"daqkd.cli"} == {module for module, _, _ in COMMANDS.values()}
    for module, _, example in COMMANDS.values():
        assert callable(importlib.import_module(module).main) and example.startswith("daqkd ")


def test_help_lists_the_commands_and_a_wrong_one_is_one_line():
    script = Path(sys.executable).with_name("daqkd")  # installed by pip install -e (make test)
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "daqkd.cli"]
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and all(f"  {name} " in shown.stdout for name in COMMANDS)
    wrong = subprocess.run([*command, "trian", "bits=4"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1 and "'trian'" in wrong.stderr


def test_a_subcommand_runs_that_commands_code(entry_point, tmp_path):
    # daqkd run --cfg job prints the composed config as python -m daqkd.run does.
    via_cli = entry_point(tmp_path, "run", "bits=4", "--cfg", "job", module="daqkd.cli")
    direct = entry_point(tmp_path, "bits=4", "--cfg", "job", module="daqkd.run")
    assert via_cli.returncode == direct.returncode == 0
    assert via_cli.stdout == direct.stdout and "w: 4" in via_cli.stdout
    # An argparse command gets its arguments, and its error is its own one line.
    missing = entry_point(tmp_path, "report", str(tmp_path / "nowhere"), module="daqkd.cli")
    assert missing.returncode != 0 and "nowhere" in missing.stderr + missing.stdout
    assert not os.path.exists(tmp_path / "nowhere")
