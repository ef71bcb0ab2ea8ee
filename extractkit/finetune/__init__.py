"""The fine-tune flywheel: export validated extractions as training data (or as a few-shot pool),
launch the job, poll it, and put the model into the config as the fine-tuned tier."""

from ._data import Collected, Selection, TrainingExample, collect
from ._export import (
    FEW_EXAMPLES,
    MIN_EXAMPLES,
    TRAINING_CONTEXT,
    ExportReport,
    HarvestReport,
    chat_example,
    export_finetune,
    harvest_examples,
)
from ._jobs import Job, alaunch, astatus, config_diff, launch, status, with_finetuned_model

__all__ = [
    "FEW_EXAMPLES",
    "MIN_EXAMPLES",
    "TRAINING_CONTEXT",
    "Collected",
    "ExportReport",
    "HarvestReport",
    "Job",
    "Selection",
    "TrainingExample",
    "alaunch",
    "astatus",
    "chat_example",
    "collect",
    "config_diff",
    "export_finetune",
    "harvest_examples",
    "launch",
    "status",
    "with_finetuned_model",
]
