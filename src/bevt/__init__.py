"""bevt: BERT pretraining of video transformers (BEVT, CVPR 2022) as a usable library."""

from bevt import convert
from bevt.models import create_model

__all__ = ["create_model", "convert"]
__version__ = "0.1.0"
