"""The configs ship inside the wheel; no project file is git-ignored (pyproject.toml)."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]

def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "daqkd").rglob("__init__.py")}
    assert "daqkd.quant" in on_disk
    assert on_disk <= listed, f"add to pyproject's packages: {sorted(on_disk - listed)}"

@pytest.mark.slow
def test_wheel_carries_the_configs(tmp_path):
    # Built from a copy of the tracked tree: an in-tree build/ left by an earlier build would leak stale files.
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for rel in tracked or [str(p.relative_to(REPO)) for d in ("daqkd", "conf") for p in (REPO / d).rglob("*") if p.is_file()]:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
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


def test_the_repository_points_at_its_own_method_document():
    """docs/METHOD.md exists, its sections are the ones the code cites, and nothing points outside the
    repository (a clone has no ../shared)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    method = (root / "docs" / "METHOD.md").read_text()
    sections = set(re.findall(r"^## (\d+)\.", method, flags=re.M))
    files = [*root.joinpath("daqkd").rglob("*.py"), *root.joinpath("conf").rglob("*.yaml"), root / "README.md", root / "Makefile"]
    for f in files:
        text = f.read_text()
        assert "shared/spec" not in text and "../shared" not in text, f
        for sec in re.findall(r"METHOD\.md §(\d+)", text):
            assert sec in sections, (f, sec)
        assert not re.search(r"(?<![/\w])METHOD\.md", text), f  # always docs/METHOD.md
