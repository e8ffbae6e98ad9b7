"""hftrain: fine-tune pretrained Hugging Face transformers with PyTorch Lightning.

Everything is imported lazily so that ``import hftrain`` (and ``hftrain --help``) stays cheap;
``from hftrain import TextClassification`` and ``hftrain.fit(...)`` still work as usual.
"""

import warnings
from importlib import import_module

from hftrain.core import notices

__version__ = "0.1.0"

# In a Jupyter kernel without ipywidgets, tqdm.auto (imported by datasets and transformers) warns to install
# them; hftrain's progress display needs none, so the advice only misleads.
warnings.filterwarnings("ignore", message="IProgress not found")
# other libraries' notices no user acts on, dropped before the first of them (see hftrain/core/notices.py)
notices.drop_notices()
notices.own_warnings_as_lines()

_EXPORTS = {
    "fit": "hftrain.api",
    "Run": "hftrain.api",
    "trainer": "hftrain.api",
    "tune": "hftrain.tuning.search",
    "HFTrainError": "hftrain.core.errors",
    "TaskModule": "hftrain.core.module",
    "TaskDataModule": "hftrain.core.data",
    "TextClassification": "hftrain.tasks.text_classification",
    "TextClassificationData": "hftrain.tasks.text_classification",
    "TokenClassification": "hftrain.tasks.token_classification",
    "TokenClassificationData": "hftrain.tasks.token_classification",
    "QuestionAnswering": "hftrain.tasks.question_answering",
    "QuestionAnsweringData": "hftrain.tasks.question_answering",
    "Seq2Seq": "hftrain.tasks.seq2seq",
    "Seq2SeqData": "hftrain.tasks.seq2seq",
    "LanguageModeling": "hftrain.tasks.language_modeling",
    "LanguageModelingData": "hftrain.tasks.language_modeling",
    "MultipleChoice": "hftrain.tasks.multiple_choice",
    "MultipleChoiceData": "hftrain.tasks.multiple_choice",
    "MaskedLanguageModeling": "hftrain.tasks.masked_language_modeling",
    "MaskedLanguageModelingData": "hftrain.tasks.masked_language_modeling",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hftrain' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
