"""The configs ship inside the wheel, so `python -m daqkd.run` works outside a checkout."""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "daqkd").rglob("__init__.py")}
    assert "daqkd.quant" in on_disk
    assert on_disk <= listed, f"add to pyproject's packages: {sorted(on_disk - listed)}"


@pytest.mark.slow
def test_wheel_carries_the_configs(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(tmp_path.glob("daqkd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    yamls = {n for n in names if n.endswith(".yaml")}
    on_disk = {"daqkd/conf/" + p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert on_disk == yamls
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = subprocess.run(
        [sys.executable, "-c", "import daqkd.config as c; print(c.config_dir())"],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == site / "daqkd" / "conf"


def test_no_source_file_is_git_ignored():
    """An unanchored pattern in .gitignore once hid daqkd/data/ from every clone."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = [p for d in ("daqkd", "conf", "tests") for p in (REPO / d).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml")]
    probe = subprocess.run(["git", "check-ignore", "--stdin"], cwd=REPO, capture_output=True, text=True,
                           input="\n".join(str(p.relative_to(REPO)) for p in files))
    assert probe.stdout.strip() == "", f"git ignores these project files:\n{probe.stdout}"
