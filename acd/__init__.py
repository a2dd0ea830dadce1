"""acd: automated circuit discovery for transformer language models.

The public API (see docs/ and DESIGN.md's data flow):

    model = acd.load_model("toy")        # embedded default | local HF dir | hub name
    task = acd.load_task("ioi")          # shipped name | path to .toml / .csv / .jsonl
    batch = task.make_batch(model.tokenizer, n=100, seed=0)
"""

from acd.errors import AcdError, TaskError
from acd.models import ModelAdapter, list_models, load_model
from acd.tasks import PromptBatch, PromptPair, Task, list_tasks, load_task

__version__ = "0.1.0"

__all__ = [
    "AcdError",
    "ModelAdapter",
    "PromptBatch",
    "PromptPair",
    "Task",
    "TaskError",
    "list_models",
    "list_tasks",
    "load_model",
    "load_task",
]
