"""The config tree composes; bad values fail early and clearly (daqkd/config.py, conf/)."""
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from daqkd.config import ConfigError, config_dir, group_options, normalize_overrides, validate_config

GROUPS = ["dataset", "model", "augment", "metric", "quantizer", "bits", "kd", "trainer", "logger", "experiment", "debug", "optim",
          "teacher", "pool", "sweep"]

def options(group):
    return group_options(group)

@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(make_cfg, group, option):
    extra = []
    if f"{group}={option}" == "dataset=imagefolder":  # the two values a user must give
        extra = ["dataset.num_classes=5", "dataset.datamodule.source_options.folder=/data/mine"]
    cfg = make_cfg(f"{group}={option}", *extra, fast=False)
    assert cfg.dataset.num_classes > 0
    validate_config(cfg)
    if group == "kd":
        assert cfg.kd.name == option
        assert (cfg.kd.method is None) == (option in ("kd", "sqakd", "none"))
    if group == "quantizer" and cfg.quantizer.weight is not None:
        q = instantiate(cfg.quantizer.weight)(bits=2, signed=True)
        assert q.bits == 2

def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), f"conf/{g}/ is empty"

def test_wrong_group_option_lists_valid_ones(make_cfg):
    with pytest.raises((ConfigCompositionException, MissingConfigException)) as e:
        make_cfg("quantizer=nosuch")
    assert "ewgs" in str(e.value) and "fp" in str(e.value)

def test_numeric_bits_choices_are_quoted_like_the_cli_needs():
    assert normalize_overrides(["bits=2", "bits=2,4", "bits.w=3", "seed=2", "kd=kd"]) == [
        "bits='2'", "bits='2','4'", "bits.w=3", "seed=2", "kd=kd"]

def test_mixed_bits_and_rejected_bits(make_cfg):
    cfg = make_cfg("bits.w=2", "bits.a=4")
    validate_config(cfg)
    assert (cfg.bits.w, cfg.bits.a) == (2, 4)
    with pytest.raises(ConfigError, match=r"bits.a=5 .*allowed bit widths: 2, 3, 4, 8, 32"):
        validate_config(make_cfg("bits.a=5"))

@pytest.mark.parametrize(
    "override,match",
    [
        ("augment.pool=[minimal,nosuch]", "augment.pool: 'nosuch' is not a DA"),
        ("metric.num_samples=5", "below the number of classes"),
        ("quantizer.first_last=int4", "first_last"),
        ("ckpt_path=/nonexistent.ckpt", "does not exist"),
        ("dataset.in_channels=3", r"dataset.in_channels=3 does not match dataset.datamodule.mean, which has 1 value.*dataset.in_channels=1"),
        ("+augment.params.augmix.nonsense=1", "nonsense"),
        # A key misspelt in a YAML file (here added with +) is named with the keys its target takes.
        ("+kd.method.bank_sise=10", r"kd.method.bank_sise is not a parameter of ContrastiveRepresentation; did you mean kd.method.bank_size\?"),
        ("+trainer.max_epoch=3", r"trainer.max_epoch is not a parameter of Trainer; did you mean trainer.max_epochs\?"),
        ("+optim.optimizer.learning_rate=0.1", r"optim.optimizer.learning_rate is not a parameter of Adam; its keys: .*lr"),
        ("teacher.warmup_epochs=99", r"teacher.warmup_epochs=99 leaves no epoch"),
        ("teacher.warmup_epochs=-1", r"teacher.warmup_epochs"),
    ],
)
def test_bad_values_name_the_problem(make_cfg, override, match):
    extra = ["kd=crd"] if "kd.method" in override else []
    with pytest.raises(ConfigError, match=match):
        validate_config(make_cfg(*extra, override))

def test_config_dir_is_inside_the_package_or_checkout():
    d = config_dir()
    assert (d / "config.yaml").is_file()
    with initialize_config_dir(config_dir=str(d), version_base="1.3"):
        assert compose("config", overrides=["paths.output_dir=/tmp"]).task_name == "train"
