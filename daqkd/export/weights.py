"""``student_weights.npz``: the frozen student's numbers as a plain numpy archive (no pickle), with
weights below 8 bits packed 2 or 4 bits each, and its loader."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from daqkd.io import atomic_write
from daqkd.quant.convert import FloatLayer, FrozenLayer, batchnorm_affine, pack, unpack


def save_weights(frozen: nn.Module, path: str | Path) -> Path:
    """The frozen module's numbers as a plain numpy archive (no pickle): for each quantized layer its
    integer weights packed 2 or 4 bits each below 8 bits (``<layer>.weight_packed``, with
    ``.weight_shape`` and ``.weight_bits``), the per-channel scales, zero points and correction, the
    bias, and its activation grid (``<layer>.act`` = in_scale, in_zero, out_scale, out_zero, qmin,
    qmax); float layers' weights and biases as they are; a BatchNorm left unfolded as its per-channel
    affine map y = bn_scale·x + bn_shift. ``load_weights_file`` unpacks it."""
    import numpy as np

    arrays: dict[str, np.ndarray] = {}
    for name, m in frozen.named_modules():
        if isinstance(m, FrozenLayer):
            if m.quantized_weight:
                arrays[f"{name}.weight_packed"] = pack(m.weight_int, m.weight_bits).numpy()
                arrays[f"{name}.weight_shape"] = np.array(m.weight_int.shape, dtype=np.int64)
                arrays[f"{name}.weight_bits"] = np.array(m.weight_bits, dtype=np.int64)
                arrays[f"{name}.weight_scale"] = m.weight_scale.numpy()
                arrays[f"{name}.weight_zero"] = (m.weight_zero_int.double() + m.weight_zero_rem).numpy()
            else:
                arrays[f"{name}.weight"] = m.weight_float.numpy()
            arrays[f"{name}.bias"] = m.bias.numpy()
            if m.act is not None:
                a = m.act
                arrays[f"{name}.act"] = np.array([a.in_scale, a.in_zero_int + a.in_zero_rem, a.out_scale, a.out_zero_int + a.out_zero_rem,
                                                  a.qmin, a.qmax], dtype=np.float64)
        elif isinstance(m, FloatLayer):
            arrays[f"{name}.weight"] = m.layer.weight.detach().numpy()
            arrays[f"{name}.bias"] = m.layer.bias.detach().numpy()
        elif isinstance(m, nn.BatchNorm2d):  # one that could not be folded (a negative γ/σ) stays as it is
            factor, shift = batchnorm_affine(m)
            arrays[f"{name}.bn_scale"], arrays[f"{name}.bn_shift"] = factor.detach().numpy(), (shift - m.running_mean * factor).detach().numpy()
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return Path(path)


def load_weights_file(path: str | Path) -> dict:
    """``save_weights``'s archive with every packed weight unpacked: {name: numpy array}; a quantized
    layer's ``<layer>.weight_int`` holds its integers, uint8, in the layer's weight shape."""
    import numpy as np

    with np.load(path) as z:
        arrays = dict(z)
    for key in [k for k in arrays if k.endswith(".weight_packed")]:
        layer = key.removesuffix(".weight_packed")
        shape = tuple(int(v) for v in arrays.pop(f"{layer}.weight_shape"))
        arrays[f"{layer}.weight_int"] = unpack(torch.from_numpy(arrays.pop(key)), int(arrays[f"{layer}.weight_bits"]), shape).numpy()
    return arrays
