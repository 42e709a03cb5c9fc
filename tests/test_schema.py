"""Each key a user sets is declared once (daqkd/schema.py) and validate_config holds every config to
the declarations: a value outside them is one ConfigError naming the key, what is allowed and an
example that is itself allowed."""
import copy

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from daqkd import schema
from daqkd.config import ConfigError, validate_config

DECLARED = list(schema.declared())


@pytest.fixture(scope="module")
def base(session_cfg):
    """The default config, composed once (each test changes a copy)."""
    cfg = session_cfg(fast=False)
    return lambda: copy.deepcopy(cfg)


def _outside(tp, meta):
    """Values a declaration forbids: the wrong type, and the first value past each bound."""
    out = ["nope"] if not schema._fits("nope", tp, meta) else [3]  # a string, or for a string key a number
    for bound, past in (("ge", -1), ("gt", 0), ("le", 0.5), ("lt", 0)):
        if meta[bound] is not None:
            out.append(meta[bound] + past)
    return out


def test_every_declared_key_is_in_a_composed_config(make_cfg):
    cfgs = [make_cfg(fast=False), make_cfg("quantizer=lsq", fast=False), make_cfg("kd=crd", fast=False)]
    missing = [key for key, _, _ in DECLARED if all(OmegaConf.select(c, key, default="__absent__") == "__absent__" for c in cfgs)]
    assert not missing, f"declared in daqkd/schema.py but in no config: {missing}"


@pytest.mark.parametrize("key,tp,field", DECLARED, ids=[k for k, _, _ in DECLARED])
def test_a_value_outside_the_declaration_is_one_line_naming_the_key(base, key, tp, field):
    if key == "dataset.in_channels":
        values = [2]
    elif key.startswith("bits."):
        values = [5, "nope"]
    else:
        values = _outside(tp, field.metadata)
    for value in values:
        cfg = base()
        OmegaConf.update(cfg, key, value, force_add=True)
        with pytest.raises(ConfigError) as e:
            validate_config(cfg)
        message = str(e.value)
        assert message.startswith(f"{key}=") and "\n" not in message, message
        assert "e.g." in message, message


@pytest.mark.parametrize("key,tp,field", DECLARED, ids=[k for k, _, _ in DECLARED])
def test_the_example_in_the_message_is_allowed(base, key, tp, field):
    example = field.metadata["example"]
    value = OverridesParser.create().parse_override(f"{key}={example}").value()
    cfg = base()
    if key == "metric.chunk":
        cfg.metric.batch_size = 250  # the chunk must be a multiple of the batch size (a rule between keys)
    OmegaConf.update(cfg, key, value, force_add=True)
    schema.check(cfg)


def test_the_words_say_what_is_allowed():
    words = {key: schema.describe(tp, f.metadata) for key, tp, f in DECLARED}
    assert words["teacher.momentum"] == "a number in [0, 1)"
    assert words["speed.threads"] == "auto or an integer ≥ 1"
    assert words["speed.compile"] == "true, false or auto"
    assert words["dataset.datamodule.train_subset"] == "null or an integer ≥ 1"
    assert words["dataset.in_channels"] == "1 or 3"
    assert words["quantizer.callback.max_time_fraction"] == "a number in (0, 1]"


def test_choices_come_from_the_registry(base):
    from daqkd.registry import SELECTORS

    cfg = base()
    cfg.metric.selector = "toy_only_here"
    with pytest.raises(ConfigError, match="metric.selector=toy_only_here is not allowed; choose one of auto, "):
        validate_config(cfg)
    SELECTORS.names()  # loaded first, so the toy is the last entry
    SELECTORS.add("toy_only_here", lambda s: -s.entropy, field="entropy")
    try:
        validate_config(cfg)
    finally:
        SELECTORS._entries.pop("toy_only_here"), SELECTORS._meta.pop("toy_only_here")
