"""Tasks: prompt pairs (clean, corrupted, answers) and their tokenized, validated batches.

A task is data: a TOML file in tasks/ (or the user's own), or a CSV/JSONL of prompt pairs.
The code knows four task *kinds* (``acd.tasks.kinds``): ``template``, ``induction``,
``pairs`` and ``compiled`` (random inputs of a compiled program, docs/ground_truth.md).

The flow is one direction: ``Task.prompt_pairs(n, seed)`` gives model-independent text,
``encode_pairs(pairs, tokenizer)`` turns it into a ``PromptBatch`` of token ids for one
tokenizer, validating every pair on the way (see docs/tasks.md).

Modules:
    batch      PromptPair, PromptBatch (and ``PromptBatch.from_token_ids``), METRIC_NAMES
    encoding   text to token ids: encode_pairs
    kinds      Task, TemplateTask, InductionTask, PairsTask, CompiledTask
    files      tasks_dir, list_tasks, load_task: the task files and pair files
"""

from acd.tasks.batch import BATCH_TENSOR_FIELDS, METRIC_NAMES, PromptBatch, PromptPair
from acd.tasks.encoding import encode_pairs
from acd.tasks.files import list_tasks, load_task, tasks_dir
from acd.tasks.kinds import CompiledTask, InductionTask, PairsTask, Task, TemplateTask

__all__ = [
    "BATCH_TENSOR_FIELDS",
    "CompiledTask",
    "METRIC_NAMES",
    "InductionTask",
    "PairsTask",
    "PromptBatch",
    "PromptPair",
    "Task",
    "TemplateTask",
    "encode_pairs",
    "list_tasks",
    "load_task",
    "tasks_dir",
]
