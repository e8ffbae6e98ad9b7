"""hftrain: fine-tune pretrained Hugging Face transformers with PyTorch Lightning.

The task classes are imported lazily so that ``import hftrain`` (and ``hftrain --help``) stays cheap;
``from hftrain import TextClassification`` still works as usual.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "HFTrainError": "hftrain.core.errors",
    "TaskModule": "hftrain.core.module",
    "TaskDataModule": "hftrain.core.data",
    "TextClassification": "hftrain.tasks.text_classification",
    "TextClassificationData": "hftrain.tasks.text_classification",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hftrain' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
