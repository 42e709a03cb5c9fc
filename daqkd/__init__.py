"""daqkd: quantization-aware training with knowledge distillation, the data augmentation chosen by the
full-precision teacher (README.md). ``daqkd --help`` lists the commands."""
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("daqkd")
except PackageNotFoundError:  # run from a checkout that is not installed
    __version__ = "unknown"
