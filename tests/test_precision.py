"""trainer.precision=bf16-mixed with every quantizer: training steps run, the loss and every quantizer
gradient stay finite, and each activation quantizer works in fp32, so its output lies exactly on its
grid (daqkd/quant/base.py casts its input; bf16 cannot tell 255 levels apart)."""
import lightning as L
import pytest
import torch

from daqkd.quant.base import QuantLayerMixin, quantizer_parameters

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("quantizer", ["ewgs", "pact", "lsq", "dorefa"])
def test_bf16_mixed_trains_every_quantizer_with_fp32_grids(make_cfg, make_module, quantizer):
    cfg = make_cfg(f"quantizer={quantizer}", "bits=4", "quantizer.first_last=int8", "dataset.datamodule.batch_size=16")
    dm, module = make_module(cfg)
    dm.set_train_augment("minimal")
    seen, grads = [], []

    def check_grid(q, inputs, output):
        seen.append((inputs[0].dtype, output.dtype))
        k = (output.float() / q.grid().out_scale + q.grid().out_zero)  # integers, if the grid held in fp32
        assert torch.allclose(k, k.round(), atol=2e-3), f"{type(q).__name__} output leaves its grid"

    for _, layer in ((n, m) for n, m in module.student.named_modules() if isinstance(m, QuantLayerMixin)):
        if layer.act_quantizer is not None:
            layer.act_quantizer.register_forward_hook(check_grid)

    class Grads(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            grads.append([p.grad.clone() for p in quantizer_parameters(pl_module.student) if p.grad is not None])

    trainer = L.Trainer(precision="bf16-mixed", max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, callbacks=[Grads()], enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 and torch.isfinite(torch.tensor(float(trainer.callback_metrics["train/loss"])))
    assert seen and all(i == torch.float32 and o == torch.float32 for i, o in seen)
    assert grads and all(torch.isfinite(g).all() for step in grads for g in step)
    assert any(float(g.abs().sum()) > 0 for g in grads[-1])
