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


def test_defaults_build_the_documented_run(make_cfg):
    """The default config builds an EWGS W2A2 ResNet-20 student trained with γ·CE + α·T²·KL (γ=1, α=2, T=4)
    and scores the paper's 7 DAs."""
    import torch

    import daqkd.run as run
    from daqkd.augment import PAPER_POOL
    from daqkd.kd import kd_kl
    from daqkd.quant import EWGSQuantizer, quant_layers

    cfg = make_cfg(fast=False)
    student = run.build_student(cfg, run.build_model(cfg))
    layers = dict(quant_layers(student))
    assert len(layers) == 18 and type(student.conv1) is torch.nn.Conv2d
    assert all(isinstance(m.weight_quantizer, EWGSQuantizer) and m.weight_quantizer.bits == 2 and m.act_quantizer.bits == 2
               for m in layers.values())
    assert student.conv1.in_channels == 1 and student.fc.out_features == 10  # Fashion-MNIST's shape
    loss, *_ = run.build_kd(cfg, student, None, None)
    zs, zt, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    total, _ = loss(zs, zt, y)
    assert torch.allclose(total, torch.nn.functional.cross_entropy(zs, y) + 2 * kd_kl(zs, zt, 4.0))
    cb = run.build_selection(cfg, None, None)
    assert cb.candidates == list(PAPER_POOL) and cb.fixed is None


def test_teacher_and_optim_recipes_follow_the_dataset(make_cfg):
    import daqkd.run as run
    from daqkd.module import QATKDModule

    cfg = make_cfg("dataset=cifar100", "model=resnet20", fast=False)
    teacher = run.build_model(cfg)
    student = run.build_student(cfg, teacher)
    loss, *_ = run.build_kd(cfg, student, teacher, None)
    module = QATKDModule(student, teacher, loss, 100, run.instantiate(cfg.optim.optimizer), cfg.optim.quant_lr)
    opt = module.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [5e-4, 5e-6]  # the CIFAR-100 QAT recipe
    assert opt.param_groups[0]["weight_decay"] == 5e-4 and opt.param_groups[1]["weight_decay"] == 0
    assert cfg.teacher.lr == 0.05
    dm = run.build_datamodule(cfg)
    assert dm.mean == [0.5071, 0.4865, 0.4409] and dm.batch_size == 64


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
