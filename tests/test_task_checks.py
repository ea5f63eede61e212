"""Bad task settings get one clear error before expensive work (lenx.tasks, the tasks probe): sizes too large for
a task's vocabulary, bad task configs, probe parameters, values that stop before Hydra creates a run directory, and
sizes too small to split."""

import numpy as np
import pytest
from test_tasks import Scripted

from lenx import tasks as T
from lenx.errors import ConfigError


def test_too_large_sizes_are_reported_not_crashed():
    task = T.KVRecall(train_size=4, keys=10)
    rows = list(T.task_accuracy(Scripted("kv_recall", task), task, multipliers=[2, 4], instances=2, batch=2,
                                decode="teacher", device="cpu"))
    assert [r["status"] for r in rows] == ["ok", "too_large"]
    task = T.MQAR(train_size=4, vocab=20)  # 9 keys
    assert [r["status"] for r in T.task_accuracy(Scripted("mqar", task), task, multipliers=[2, 4], instances=2,
                                                 batch=2, decode="teacher", device="cpu")] == ["ok", "too_large"]


@pytest.mark.parametrize("spec, match", [
    ({"_target_": "lenx.tasks.Copy", "train_size": 0}, "data.task.train_size must be a positive integer"),
    ({"_target_": "lenx.tasks.Copy", "train_size": 4, "min_size": 5}, "min_size=5 is larger"),
    ({"_target_": "lenx.tasks.Addition", "train_size": 4, "order": "backwards"}, "order must be reversed or plain"),
    ({"_target_": "lenx.tasks.Copy", "train_size": 4, "nope": 1}, "data.task: .*nope"),
    ({"_target_": "collections.OrderedDict"}, "is not a lenx.tasks.Task"),
    ({"_target_": "os.system", "command": "touch pwned"}, "os.system is not a lenx.tasks.Task"),  # never called
    ({"_target_": "lenx.tasks.build_task", "cfg": 1}, "is not a lenx.tasks.Task"),
    ({"_target_": "lenx.tasks.Copy", "train_size": {"_target_": "os.getpid"}}, "must be plain values"),
    ({"_target_": "lenx.tasks.Copy", "train_size": 4, "curriculum": 2}, "curriculum must be a fraction"),
    ({"_target_": "lenx.tasks.Copy", "train_size": 4, "curriculum": "half"}, "curriculum must be a fraction"),
])
def test_bad_task_configs_are_one_line(spec, match):
    with pytest.raises(ConfigError, match=match):
        T.build_task({"data": {"task": spec}})


def test_probe_parameters_are_checked():
    with pytest.raises(ConfigError, match="decode must be teacher or greedy"):
        T.TaskAccuracy(multipliers=[1], decode="beam")
    with pytest.raises(ConfigError, match="multipliers must be a positive integer"):
        T.TaskAccuracy(multipliers=[0.5])


def test_bad_task_values_stop_before_hydra_creates_the_run_directory(tmp_path):
    from conftest import CONFIGS
    from hydra import compose, initialize_config_dir

    from lenx.preflight import check_job

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["data=addition", "data.task.order=backwards"])
    with pytest.raises(ConfigError, match="data.task.order must be reversed or plain"):
        check_job(cfg)


def test_validation_draws_sizes_too_small_to_split_and_evaluation_refuses_them():
    """Parity of 1 bit has two instances: validation (a loss monitor over training's sizes) may draw one from the
    training half; evaluation, scored as held out, refuses the size rather than score a training instance."""
    task = T.Parity(train_size=4)
    assert all(len(task.instance(0, "validation", i, 1)[0]) == 4 for i in range(50))  # BOS bit SEP answer
    held_out = {tuple(task.instance(0, "eval", i, 2)[0]) for i in range(50)}
    assert held_out and all(T.half_of(np.asarray(x)) == T.HALF["eval"] for x in held_out)
    with pytest.raises(ConfigError, match="too few distinct parity instances"):
        [task.instance(0, "eval", i, 1) for i in range(50)]
