"""Write lenx's task families as lm-evaluation-harness tasks over held-out instances, so that a lenx checkpoint and
any Hugging Face model are scored on the same instances by the same tool:
`python scripts/export_lm_eval_tasks.py OUT_DIR [--tasks copy,reverse,...] [--ckpt <task run>/checkpoints/last.ckpt]
[--multipliers 1,2,4,8,16] [--instances 100] [--seed 0]`.

For each task and multiplier m this writes OUT_DIR/<task>_x<m>.jsonl, one line per instance: instance i of size
m x train_size is `task.instance(seed, "eval", i, size)`, held out of training and the very instance the `tasks`
probe (eval.probes.tasks, same seed) scores; and OUT_DIR/<task>_x<m>.yaml, an lm-eval `loglikelihood` task named
lenx_<task>_x<m> (tags lenx_tasks and lenx_<task>) reading that file with the `json` builder (no hub). An instance is
text: its symbols' names separated by spaces, the prompt (BOS left out: the lenx backend puts it first) as context,
the answer as continuation. lm-eval's `acc` is 1 where every answer token is the model's argmax given the true
prefix: lenx's exact match (a fully right answer is its own greedy decoding); `perplexity` is per instance.

The tasks are those of configs/data/ (their default settings), or with --ckpt the task a checkpoint was trained on,
with its settings. mqar (answers are labels, not tokens of the sequence), kv_recall (answers interleaved with
the queries) and any other family whose answers are not one continuation at the end (flip-flop's reads, the word
problems' labels; `not_exportable` checks held-out instances) are skipped with a line saying why. Sizes a task
cannot draw are skipped with a note. Score with
  lenx-lm-eval --model lenx --model_args ckpt=<task run>/checkpoints/last.ckpt,max_length=<N> \\
      --include_path OUT_DIR --tasks lenx_copy
  lm_eval --model hf --model_args pretrained=<model dir> --include_path OUT_DIR --tasks lenx_copy
where N covers the longest instance (printed below; the lenx backend cuts longer inputs from the left).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from lenx.checkpoint import read_checkpoint, safe_run_config
from lenx.configs import CONFIG_DIR, config_names, load_yaml
from lenx.errors import ConfigError, user_errors
from lenx.results import atomic_write_text
from lenx.tasks import Task, build_task

NOT_EXPORTED = {"mqar": "its answers are labels, not tokens of the sequence",
                "kv_recall": "its answers are interleaved with the queries, not one continuation"}


def task_families() -> dict[str, dict]:
    """lenx's task configs by name (configs/data/<name>.yaml that have a `task` node)."""
    return {n: c for n in config_names("data") if isinstance((c := load_yaml(CONFIG_DIR / "data" / f"{n}.yaml"))
                                                               .get("task"), dict)}


def render(task: Task, ids, mask) -> dict:
    """An instance as text: {"context": prompt symbols, "answer": answer symbols}, names separated by spaces."""
    start = int(mask.argmax())
    if not mask[start:].all():
        raise ConfigError(f"{task.name}: its answers are not one continuation at the end of the instance")
    names = [task.vocab[t] for t in ids.tolist()]
    return {"context": " ".join(names[1:start]), "answer": " ".join(names[start:])}


def not_exportable(task: Task, seed: int, draws: int = 16) -> str | None:
    """Why a task's instances are no lm-eval `loglikelihood` documents (labels for answers, or answers that are not
    one continuation at the end: flip-flop's reads), from `draws` held-out instances of its training size; None
    when they are."""
    for i in range(draws):
        ids, mask, *labels = task.instance(seed, "eval", i, task.train_size)
        if labels:
            return "its answers are labels, not tokens of the sequence"
        if not mask[int(mask.argmax()):].all():
            return "its answers are not one continuation at the end of the instance"
    return None


def export(name: str, task: Task, out: Path, multipliers: list[int], instances: int, seed: int) -> list[str]:
    """Write <name>_x<m>.jsonl / .yaml for each multiplier; returns a line per file pair written or size skipped."""
    lines = []
    for m in multipliers:
        size = m * task.train_size
        if why := task.problem(size):
            lines.append(f"{name} x{m}: skipped ({why})")
            continue
        docs, longest = [], 0
        for i in range(instances):
            ids, mask, *labels = task.instance(seed, "eval", i, size)
            if labels:
                raise ConfigError(f"{name}: {NOT_EXPORTED['mqar']}; not exported")
            docs.append({**render(task, ids, mask), "task": name, "size": size, "instance": i, "seed": seed})
            longest = max(longest, len(ids) - 1)
        data = (out / f"{name}_x{m}.jsonl").resolve()
        atomic_write_text(data, "".join(json.dumps(d) + "\n" for d in docs))
        spec = {"task": f"lenx_{name}_x{m}", "tag": ["lenx_tasks", f"lenx_{name}"], "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
                "output_type": "loglikelihood", "doc_to_text": "{{context}}", "doc_to_target": " {{answer}}",
                "target_delimiter": "",  # (the space is the answer's: lm-eval 0.4.13 adds no delimiter here)
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}],
                "metadata": {"version": 1.0, "lenx_size": size, "lenx_multiplier": m, "lenx_seed": seed}}
        head = (f"# lenx task {name} at {m}x its training size ({size} {task.sizes}): {instances} held-out instances "
                f"(seed {seed}),\n# written by scripts/export_lm_eval_tasks.py; acc = exact match (every answer token "
                f"the argmax given the true prefix)\n")
        atomic_write_text(out / f"{name}_x{m}.yaml", head + yaml.safe_dump(spec, sort_keys=False))
        lines.append(f"{name} x{m}: lenx_{name}_x{m}, {instances} instances of size {size}, longest {longest} "
                     "tokens (lenx backend: max_length >= this)")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--tasks", default=None, help="comma-separated names of configs/data/ (default: every task)")
    p.add_argument("--ckpt", default=None, help="export the task this checkpoint was trained on, with its settings")
    p.add_argument("--multipliers", default="1,2,4,8,16", help="sizes as multiples of the training size")
    p.add_argument("--instances", type=int, default=100, help="held-out instances per size")
    p.add_argument("--seed", type=int, default=0, help="the instances' seed (eval.probes.tasks.seed)")
    args = p.parse_args(argv)
    with user_errors():
        try:
            multipliers = [int(x) for x in args.multipliers.split(",")]
        except ValueError:
            raise ConfigError(f"--multipliers must be integers separated by commas, got {args.multipliers!r}") from None
        if min(multipliers) < 1 or args.instances < 1 or args.seed < 0:
            raise ConfigError("--multipliers and --instances must be positive and --seed non-negative")
        if args.ckpt:
            cfg = safe_run_config(read_checkpoint(args.ckpt)["hyper_parameters"]["cfg"])
            if build_task(cfg) is None:
                raise ConfigError(f"{args.ckpt} was not trained on a task (data={cfg['data'].get('name')})")
            chosen = {cfg["data"]["name"]: cfg}
        else:
            families = task_families()
            names = args.tasks.split(",") if args.tasks else [n for n in families if n not in NOT_EXPORTED]
            for n in names:
                if n not in families:
                    raise ConfigError(f"unknown task {n!r}; lenx's tasks: {', '.join(families)}")
            chosen = {n: {"data": families[n]} for n in names}
        for n in chosen:
            if n in NOT_EXPORTED:
                raise ConfigError(f"{n} is not exported: {NOT_EXPORTED[n]}")
        tasks = {n: build_task(cfg) for n, cfg in chosen.items()}
        for n, task in list(tasks.items()):
            if why := not_exportable(task, args.seed):
                if args.ckpt or args.tasks:  # asked for by name: one line
                    raise ConfigError(f"{n} is not exported: {why}")
                print(f"{n}: skipped ({why})")  # every family: the others are written
                del tasks[n]
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for n, task in tasks.items():
            print("\n".join(export(n, task, args.out_dir, multipliers, args.instances, args.seed)))


if __name__ == "__main__":
    main()
