"""One registry mechanism for every kind of extension (daqkd/registry.py): each kind is listed and
looked up the same way, an unknown name lists the known ones, and the config groups that name
quantizers and KD methods are exactly the registered ones, so adding one is its file and its YAML."""
from pathlib import Path

import pytest

from daqkd import registry
from daqkd.config import config_dir
from daqkd.errors import ConfigError


@pytest.mark.parametrize("kind", ["model", "source", "augment", "selector", "quantizer", "kd_method"])
def test_every_kind_lists_and_gets_the_same_way(kind):
    names = getattr(registry, f"list_{kind}s")()
    assert names and len(set(names)) == len(names)
    get = getattr(registry, f"get_{kind}")
    for name in names:
        get(name)
    with pytest.raises(ConfigError, match=f"unknown .*'nope'; available: {names[0]}"):
        get("nope")


def test_registering_a_name_twice_is_an_error():
    r = registry.Registry("thing", "daqkd.registry")
    r.add("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        r.add("a", 2)


@pytest.mark.parametrize("group,listing,extra", [("quantizer", registry.list_quantizers, {"fp"}),
                                                 ("kd", registry.list_kd_methods, set()),
                                                 ("augment", registry.list_augments, {"auto"})])
def test_the_config_groups_name_the_registered_extensions(group, listing, extra):
    yamls = {p.stem for p in (Path(config_dir()) / group).glob("*.yaml")}
    assert yamls == set(listing()) | extra


def test_a_new_module_in_the_owner_package_registers_itself(tmp_path, monkeypatch):
    """Adding an extension is one file: the registry imports every public module of its package."""
    from daqkd.registry import Registry

    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from daqkd.registry import Registry\nTHINGS = Registry('thing', 'toypkg')\n")
    (pkg / "plugin.py").write_text("from toypkg import THINGS\nTHINGS.add('mine', 42)\n")
    (pkg / "_private.py").write_text("raise RuntimeError('a private module is not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import toypkg

    assert isinstance(toypkg.THINGS, Registry) and toypkg.THINGS.names() == ["mine"] and toypkg.THINGS.get("mine") == 42
