"""bevt: BERT pretraining of video transformers (BEVT, CVPR 2022) as a usable library.

`bevt.create_model` and `bevt.convert` load on first use, so `bevt --help` does not import torch.
"""

import importlib

__all__ = ["create_model", "convert"]
__version__ = "0.1.0"


def __getattr__(name):
    if name == "create_model":
        return importlib.import_module("bevt.models").create_model
    if name == "convert":
        return importlib.import_module("bevt.models.convert")
    raise AttributeError(f"module 'bevt' has no attribute {name!r}")
