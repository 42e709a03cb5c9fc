"""daqkd <command>: the console command runs every entry point as python -m would."""
import importlib
import subprocess
import sys
from pathlib import Path

from daqkd import cli
from daqkd.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def test_every_entry_point_is_a_subcommand():
    # Every module run as python -m daqkd.<...> (a __main__ block, or a package's __main__.py) is one.
    found = set()
    for p in (REPO / "daqkd").rglob("*.py"):
        dotted = ".".join(p.relative_to(REPO).with_suffix("").parts)
        if p.name == "__main__.py":
            found.add(dotted.removesuffix(".__main__"))
        elif 'if __name__ == "__main__"' in p.read_text():
            found.add(dotted)
    assert found - {"daqkd.cli", "daqkd"} == {module for module, _, _ in COMMANDS.values()}  # python -m daqkd is the console command
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
    # daqkd run --cfg job prints the composed config as python -m daqkd.run does; so does daqkd bits=4 ...
    via_cli = entry_point(tmp_path, "run", "bits=4", "--cfg", "job", module="daqkd.cli")
    bare = entry_point(tmp_path, "bits=4", "--cfg", "job", module="daqkd.cli")
    direct = entry_point(tmp_path, "bits=4", "--cfg", "job", module="daqkd.run")
    assert via_cli.returncode == bare.returncode == direct.returncode == 0
    assert via_cli.stdout == bare.stdout == direct.stdout and "w: 4" in via_cli.stdout
    # An argparse command gets its arguments, and its error is its own one line, with its exit status.
    missing = entry_point(tmp_path, "report", str(tmp_path / "nowhere"), module="daqkd.cli")
    assert missing.returncode == 2 and "nowhere" in missing.stderr and not (tmp_path / "nowhere").exists()


def test_a_subcommand_restarts_as_python_m(tmp_path, monkeypatch, capsys):
    # Lightning's DDP launcher starts each rank with the command line it rebuilds from __main__ and
    # sys.argv: under daqkd <command> that must be python -m <module> with the same arguments.
    (tmp_path / "probe_entry.py").write_text(
        "import sys\n"
        "from lightning.fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd\n"
        "def main():\n    print(_basic_subprocess_cmd())\n"
        "if __name__ == '__main__':\n    main()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "probe", ("probe_entry", "a probe", "daqkd probe"))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert cli.main(["probe", "trainer=ddp", "trainer.devices=2"]) == 0
    assert capsys.readouterr().out.strip() == str([sys.executable, "-m", "probe_entry", "trainer=ddp", "trainer.devices=2"])
