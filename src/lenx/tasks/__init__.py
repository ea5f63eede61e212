"""Length-generalisation tasks: algorithmic and retrieval tasks over small symbol vocabularies, scored by exact match.

Each task is one class (`data.task._target_`, configs/data/<task>.yaml) with its own vocabulary (PAD, BOS, SEP,
then the task's symbols: never the corpus BPE) and a size parameter (symbols, digits, pairs, hops, filler). An
instance is `[BOS] prompt [SEP] answer` (kv_recall interleaves queries and answers; mqar, Zoology's generator, has
no SEP: its queries stand among noise tokens after the pairs) with a mask marking the answer tokens: training puts
its loss on those only, and scoring asks for every one of them (exact match) and reports the fraction right
(per-token accuracy). Where the answers are labels only (mqar, as Zoology: the input holds noise there), an
instance carries a third array, its labels (the target of each position), and nothing is fed back in decoding.

Sizes: training draws each instance's size uniformly from [min_size, train_size] (as Kazemnejad et al. 2023,
arXiv:2305.19466, and Zhou et al. 2024, arXiv:2402.09371, sample lengths up to the training maximum); scoring uses
size = multiplier x train_size, so the sequence length grows with the multiplier and nothing else changes.

Instance i is a pure function of (seed, split, i): its generator is numpy's PCG64 seeded by that tuple. Training and
evaluation can never share an instance, whatever the seeds: the space of instances is cut in two by one bit of a
hash (blake2b) of an instance's tokens, training draws (by rejection) only from one half and evaluation and
validation only from the other.

Modules: algorithmic (copy, reverse, sort, parity, addition), retrieval (MQAR, kv recall, RULER's, passkey),
formal (the Chomsky-hierarchy tasks of arXiv:2207.02098), state (flip-flop, S5/A5 word problems, CoPE's counting
and selective copy).
"""

from lenx.tasks.algorithmic import Addition, Copy, Parity, Reverse, Sort
from lenx.tasks.base import (
    BOS,
    HALF,
    PAD,
    SEP,
    SPECIALS,
    SPLITS,
    Task,
    TaskItems,
    build_task,
    configure,
    half_of,
    masked_loss,
    pad,
    provenance,
    query,
)
from lenx.tasks.formal import (
    BinaryAddition,
    BinaryMultiplication,
    BucketSort,
    CycleNavigation,
    DuplicateString,
    MissingDuplicate,
    ModularArithmetic,
    OddsFirst,
    StackManipulation,
)
from lenx.tasks.probe import TASK_COLUMNS, TaskAccuracy, plot_tasks, predict, task_accuracy, wilson
from lenx.tasks.retrieval import MQAR, KVRecall, NiahMultikey, Passkey, VariableTracking
from lenx.tasks.state import Counting, FlipFlop, SelectiveCopy, WordProblem

__all__ = [
    "BOS",
    "HALF",
    "MQAR",
    "PAD",
    "SEP",
    "SPECIALS",
    "SPLITS",
    "TASK_COLUMNS",
    "Addition",
    "BinaryAddition",
    "BinaryMultiplication",
    "BucketSort",
    "Copy",
    "Counting",
    "CycleNavigation",
    "DuplicateString",
    "FlipFlop",
    "KVRecall",
    "MissingDuplicate",
    "ModularArithmetic",
    "NiahMultikey",
    "OddsFirst",
    "Parity",
    "Passkey",
    "Reverse",
    "SelectiveCopy",
    "Sort",
    "StackManipulation",
    "Task",
    "TaskAccuracy",
    "TaskItems",
    "VariableTracking",
    "WordProblem",
    "build_task",
    "configure",
    "half_of",
    "masked_loss",
    "pad",
    "plot_tasks",
    "predict",
    "provenance",
    "query",
    "task_accuracy",
    "wilson",
]
