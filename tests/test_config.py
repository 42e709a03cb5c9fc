"""Config composition: every option of every group composes; bad values fail early and clearly."""
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from daqkd.config import ConfigError, config_dir, normalize_overrides, validate_config

GROUPS = ["dataset", "model", "augment", "metric", "quantizer", "bits", "kd", "trainer", "logger", "experiment", "debug", "optim", "teacher"]


def options(group):
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


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
        assert (cfg.kd.feature is None) == (option in ("kd", "sqakd", "none"))
    if group == "quantizer" and cfg.quantizer.weight is not None:
        q = instantiate(cfg.quantizer.weight)(bits=2, signed=True)
        assert q.bits == 2


def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), f"conf/{g}/ is empty"


def test_defaults_are_the_documented_ones(make_cfg):
    cfg = make_cfg(fast=False)
    assert (cfg.dataset.name, cfg.model.name, cfg.quantizer.name, cfg.kd.name, cfg.augment.name) == (
        "fashion_mnist", "resnet20", "ewgs", "kd", "auto")
    assert (cfg.bits.w, cfg.bits.a) == (2, 2)
    assert (cfg.kd.gamma, cfg.kd.alpha, cfg.kd.temperature) == (1.0, 2.0, 4.0)
    assert len(cfg.augment.pool) == 7


def test_teacher_and_optim_recipes_follow_the_dataset(make_cfg):
    cfg = make_cfg("dataset=cifar100", fast=False)
    assert cfg.teacher.lr == 0.05 and cfg.optim.optimizer.lr == 5e-4 and cfg.optim.quant_lr == 5e-6
    assert list(cfg.dataset.datamodule.mean) == [0.5071, 0.4865, 0.4409]


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
    with pytest.raises(ConfigError, match=r"bits.a=5 .*allowed: 2, 3, 4, 8, 32"):
        validate_config(make_cfg("bits.a=5"))


@pytest.mark.parametrize(
    "override,match",
    [
        ("augment.pool=[minimal,nosuch]", "unknown augmentation 'nosuch'"),
        ("metric.num_samples=5", "below the number of classes"),
        ("quantizer.first_last=int4", "first_last"),
        ("ckpt_path=/nonexistent.ckpt", "does not exist"),
        ("+augment.params.augmix.nonsense=1", "nonsense"),
    ],
)
def test_bad_values_name_the_problem(make_cfg, override, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(make_cfg(override))


def test_config_dir_is_inside_the_package_or_checkout():
    d = config_dir()
    assert (d / "config.yaml").is_file()
    with initialize_config_dir(config_dir=str(d), version_base="1.3"):
        assert compose("config", overrides=["paths.output_dir=/tmp"]).task_name == "train"
