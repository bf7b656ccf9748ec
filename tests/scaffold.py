"""A cruijff_kit-like scaffolded experiment, written the way the client's scaffolder does
(/work/shared/CLIENT.md): a summary, task scripts of the client's shape, data files, and one
``<run>/eval/<task>[_epoch<N>]/`` cell per (run, task, epoch) with ``eval.yaml`` and
``cell.slurm`` (``#SBATCH`` lines, module/conda setup, ``export HF_HUB_OFFLINE=1``,
``cd <cell>``, ``inspect eval SCRIPT@TASK ... -T data_path="..." -T config_path=...
[-T split=...]``).

Every case of issue 10's Tests section is a cell here: the experiment lives under a
symlinked scratch folder; data paths relative, with ``//``, with a literal ``~``; a task
whose ``split`` defaults to ``"validation"`` (its file has train/validation/
validation_ood_0/metadata and no test); a cell with an explicit ``split``; a task with its
``hf_dataset`` keywords in another order; one with extra keywords (through a module-level
helper); an ``eval_condition`` file with a hash in its name; per-run ``dataset_path`` /
``eval_dataset_path``.

``data_path`` is chosen as the client does: eval_condition, the task's dataset, the run's
parameters.eval_dataset_path, parameters.dataset_path, data.training.path — and copied
into eval.yaml and cell.slurm verbatim.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

CONDITION_HASH = "3f9a1c2e"

# The start of a real inspect-ai job script (tests and bench/exact_call_table.py): mockllm
# with outputs that carry token usage, since plain mockllm/model counts tokens with
# tiktoken, which downloads its encoding (no network here).
MOCKLLM_JOB = r"""
from inspect_ai import eval as inspect_eval
from inspect_ai._util.config import parse_cli_args
from inspect_ai.model import ModelOutput, ModelUsage, get_model

def outputs():
    while True:
        out = ModelOutput.from_content(model="mockllm", content="x")
        out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        yield out
"""

# Row counts of every part of every data file (tests assert the rows a job reads).
ROWS = {
    "data/words.json": {"train": 30, "validation": 40, "test": 60},
    "data/acs.json": {"train": 20, "validation": 15, "test": 50},
    "data/organism.json": {"train": 20, "validation": 24, "validation_ood_0": 12, "metadata": 1},
    "data/words_a.json": {"train": 10, "test": 33},
    "data/words_b_eval.json": {"train": 10, "test": 35},
    f"conditions/heldout_test_{CONDITION_HASH}.json": {"test": 18},
}

# --- task scripts of the client's shape -----------------------------------------------------

_HEAD = '''import yaml
from inspect_ai import Task, task
from inspect_ai.dataset import Sample, hf_dataset
from inspect_ai.scorer import match
from inspect_ai.solver import generate, system_message

'''

_PROMPTS = '''    prompt_str, system_prompt = "{input}", ""
    if config_path:
        with open(config_path, "r") as f:
            config = yaml.safe_load(f) or {}
        prompt_str = config.get("prompt", "{input}")
        system_prompt = config.get("system_prompt", "")

    def record_to_sample(record):
        return Sample(input=prompt_str.format(input=record["input"]), target=record["output"])

'''

_TAIL = '''    return Task(dataset=dataset, solver=[system_message(system_prompt), generate()], scorer=match())
'''

SCRIPTS = {
    # the client's shipped shape: split defaults to "test"
    "capitalization.py": _HEAD + '''@task
def capitalization(
    data_path: str,
    config_path: str = "",
    split: str = "test",
    temperature: float = 1e-7,
    max_tokens: int = 20,
    use_chat_template: bool = True,
) -> Task:
''' + _PROMPTS + '''    dataset = hf_dataset(
        path="json",
        data_files=data_path,
        field=split,
        split="train",  # HuggingFace quirk - always "train" here
        sample_fields=record_to_sample,
    )
''' + _TAIL,
    "acs.py": _HEAD + '''@task
def acs_income(data_path: str, config_path: str = "", split: str = "test") -> Task:
''' + _PROMPTS + '''    dataset = hf_dataset(path="json", data_files=data_path, field=split, split="train",
                         sample_fields=record_to_sample)
''' + _TAIL,
    # the family that defaults to "validation" (files with no "test")
    "organism.py": _HEAD + '''@task
def model_organism(
    data_path: str,
    config_path: str = "",
    split: str = "validation",
    temperature: float = 1e-7,
    max_tokens: int = 5,
) -> Task:
''' + _PROMPTS + '''    dataset = hf_dataset(
        path="json",
        data_files=data_path,
        field=split,
        split="train",
        sample_fields=record_to_sample,
    )
''' + _TAIL,
    # a user's own task: the same call with field before data_files (inspect's key changes)
    "reordered.py": _HEAD + '''@task(name="capitalization_reordered")
def cap_reordered(data_path: str, config_path: str = "", split: str = "test") -> Task:
''' + _PROMPTS + '''    dataset = hf_dataset(
        path="json",
        field=split,
        data_files=data_path,
        split="train",
        sample_fields=record_to_sample,
    )
''' + _TAIL,
    # a user's own task: the call in a module-level helper, with extra keywords
    # (shuffle/limit are hf_dataset's own; keep_in_memory goes to load_dataset and the key)
    "acs_extra.py": _HEAD + '''def load_split(data_path, split, sample_fields):
    return hf_dataset(
        path="json",
        data_files=data_path,
        field=split,
        split="train",
        sample_fields=sample_fields,
        shuffle=False,
        limit=25,
        keep_in_memory=True,
    )


@task
def acs_extra(data_path: str, config_path: str = "", split: str = "test") -> Task:
''' + _PROMPTS + '''    dataset = load_split(data_path, split, record_to_sample)
''' + _TAIL,
}


@dataclass(frozen=True)
class CellSpec:
    run: str
    task: str  # the summary's task name
    epoch: Optional[int]
    split: Optional[str] = None  # written to eval.yaml (and -T split) only when set


@dataclass
class Scaffold:
    root: Path  # the test's folder
    real: Path  # the experiment folder's real location (under gpfs/)
    experiment: Path  # the experiment folder as users see it (through the scratch symlink)
    summary: Path
    cells: Dict[str, Path] = field(default_factory=dict)  # "<run>/<cell>" -> cell folder (symlinked path)

    def cell(self, run: str, name: str) -> Path:
        return self.cells[f"{run}/{name}"]


def _records(part: str, n: int, tag: str) -> List[dict]:
    return [{"input": f"{tag}-{part}-{i}", "output": f"{tag.upper()}-{part}-{i}"} for i in range(n)]


def write_data(experiment: Path) -> None:
    for rel, parts in ROWS.items():
        path = experiment / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tag = Path(rel).stem.split("_test_")[0]
        doc = {part: (_records(part, n, tag) if part != "metadata" else [{"input": "seed", "output": "1"}])
               for part, n in parts.items()}
        path.write_text(json.dumps(doc, indent=1))


def summary_doc(exp: str) -> dict:
    """The experiment summary (the client's keys); `exp` is the experiment folder as written."""
    return {
        "experiment": {"name": "cap-scaffold", "project": "cluster-agent-tests", "dir": exp},
        "controls": {"prompt": "{input}", "system_prompt": "", "dataset_type": "json"},
        "models": {"base": [{"name": "Llama-3.2-1B-Instruct", "path": "/models/Llama-3.2-1B-Instruct"}]},
        "data": {"training": {"path": f"{exp}/data/words.json", "splits": ["train", "validation", "test"]},
                 "data_generation": {"tool": "generate_conditions", "conditions": ["heldout"],
                                     "output_path": f"{exp}/conditions"}},
        "runs": [
            {"name": "run_a", "type": "fine-tuned", "model": "Llama-3.2-1B-Instruct",
             "parameters": {"lora_rank": 8, "dataset_path": f"{exp}/data/words_a.json"}},
            {"name": "run_b", "type": "fine-tuned", "model": "Llama-3.2-1B-Instruct",
             "parameters": {"lora_rank": 16, "dataset_path": f"{exp}/data/words_a.json",
                            "eval_dataset_path": f"{exp}/data/words_b_eval.json"}},
            {"name": "base", "type": "control", "model": "Llama-3.2-1B-Instruct", "parameters": {}},
        ],
        "evaluation": {
            "scorers": ["match"],
            "tasks": [
                # the experiment folder through the symlinked scratch folder
                {"name": "capitalization", "script": f"{exp}/tasks/capitalization.py",
                 "dataset": f"{exp}/data/words.json"},
                # relative: inspect eval takes it in the task script's folder (tasks/)
                {"name": "acs_relative", "script": f"{exp}/tasks/acs.py", "dataset": "../data/acs.json"},
                {"name": "cap_slashes", "script": f"{exp}/tasks/capitalization.py",
                 "dataset": f"{exp}/data//words.json"},
                {"name": "cap_tilde", "script": f"{exp}/tasks/capitalization.py",
                 "dataset": "~/cruijff-data/words.json"},
                {"name": "organism", "script": f"{exp}/tasks/organism.py", "dataset": f"{exp}/data/organism.json"},
                {"name": "cap_validation", "script": f"{exp}/tasks/capitalization.py",
                 "dataset": f"{exp}/data/words.json"},
                {"name": "cap_reordered", "script": f"{exp}/tasks/reordered.py",
                 "dataset": f"{exp}/data/words.json"},
                {"name": "acs_extra", "script": f"{exp}/tasks/acs_extra.py", "dataset": f"{exp}/data/acs.json"},
                {"name": "heldout", "script": f"{exp}/tasks/capitalization.py", "eval_condition": "heldout"},
                # no dataset: the run's eval_dataset_path / dataset_path, else data.training.path
                {"name": "cap_run", "script": f"{exp}/tasks/capitalization.py"},
            ],
            "matrix": [
                {"run": "run_a", "vis_label": "a", "epochs": [1],
                 "tasks": ["capitalization", "acs_relative", "cap_slashes", "cap_tilde", "organism",
                           "cap_validation", "cap_reordered", "acs_extra", "heldout", "cap_run"]},
                {"run": "run_b", "vis_label": "b", "epochs": [1], "tasks": ["capitalization", "cap_run"]},
                {"run": "base", "vis_label": "base", "epochs": None, "tasks": ["cap_run", "organism"]},
            ],
        },
    }


# task name -> the @task inside its script
TASK_OF_SCRIPT = {"capitalization.py": "capitalization", "acs.py": "acs_income", "organism.py": "model_organism",
                  "reordered.py": "capitalization_reordered", "acs_extra.py": "acs_extra"}
# cells that pass an explicit split (eval.yaml split + -T split)
EXPLICIT_SPLIT = {"cap_validation": "validation"}


def data_path_for(doc: dict, task: dict, run: dict) -> str:
    """The client's order: eval_condition, task dataset, run eval_dataset_path, run
    dataset_path, data.training.path."""
    if task.get("eval_condition"):
        out = doc["data"]["data_generation"]["output_path"]
        return f"{out}/{task['eval_condition']}_test_{CONDITION_HASH}.json"
    params = run.get("parameters") or {}
    for value in (task.get("dataset"), params.get("eval_dataset_path"), params.get("dataset_path")):
        if value:
            return value
    return doc["data"]["training"]["path"]


CLIENT_SETUP = ("module purge", "module load anaconda3/2025.6", "conda activate cruijff")


def cell_slurm(cell: str, task_script: str, data_path: str, split: Optional[str], model: str,
               model_path: str, setup: Sequence[str], job_name: str) -> str:
    """cell.slurm as the client's template renders it (src/tools/inspect/templates/eval_template.slurm)."""
    split_arg = f'  -T split="{split}" \\\n' if split is not None else ""
    return (
        "#!/bin/bash\n"
        f"#SBATCH --job-name={job_name} # Job name\n"
        "#SBATCH --nodes=1 # Number of nodes\n"
        "#SBATCH --ntasks=1 # Number of tasks\n"
        "#SBATCH --cpus-per-task=1\n"
        "#SBATCH --mem=4G # Memory allocation\n"
        "#SBATCH --time=00:20:00 # Time limit (HH:MM:SS)\n"
        f"#SBATCH --output={cell}/slurm-%j.out\n"
        "##SBATCH --account=<ACT>\n"
        "\n"
        + "".join(f"{line}\n" for line in setup) +
        "\n"
        "# Prevent HF Hub lookups on offline compute nodes (inspect-ai >= 0.3.180)\n"
        "export HF_HUB_OFFLINE=1\n"
        "\n"
        "# Run inspect-ai evaluation\n"
        f"cd {cell}\n"
        "\n"
        f"/usr/bin/time -p inspect eval {task_script} \\\n"
        f"  --model {model} \\\n"
        f'  -M model_path="{model_path}" \\\n'
        f'  -T data_path="{data_path}" \\\n'
        f'  -T config_path="{cell}/eval.yaml" \\\n'
        f"{split_arg}"
        "  --max-connections 1 \\\n"
        "  --seed 42 \\\n"
        "  --log-dir ./logs \\\n"
        "  --log-level info\n"
        "INSPECT_EXIT_CODE=$?\n"
    )


def build(root: Path, model: str = "hf/Llama-3.2-1B-Instruct", setup: Sequence[str] = CLIENT_SETUP,
          link_name: str = "scratch") -> Scaffold:
    """Write the experiment under root/<link_name> (a symlink to root/gpfs/<link_name>)."""
    real_scratch = root / "gpfs" / link_name
    (real_scratch / "user").mkdir(parents=True, exist_ok=True)
    link = root / link_name
    if not link.exists():
        os.symlink(real_scratch, link)
    experiment = link / "user" / "cap_sweep"
    experiment.mkdir(parents=True, exist_ok=True)
    exp = str(experiment)
    write_data(experiment)
    (experiment / "tasks").mkdir(exist_ok=True)
    for name, text in SCRIPTS.items():
        (experiment / "tasks" / name).write_text(text)
    doc = summary_doc(exp)
    summary = experiment / "experiment_summary.yaml"
    summary.write_text(yaml.safe_dump(doc, sort_keys=False))
    scaffold = Scaffold(root=root, real=real_scratch / "user" / "cap_sweep", experiment=experiment, summary=summary)

    tasks = {t["name"]: t for t in doc["evaluation"]["tasks"]}
    runs = {r["name"]: r for r in doc["runs"]}
    model_info = doc["models"]["base"][0]
    for row in doc["evaluation"]["matrix"]:
        run = runs[row["run"]]
        for task_name in row["tasks"]:
            task = tasks[task_name]
            for epoch in row["epochs"] or [None]:
                name = task_name if epoch is None else f"{task_name}_epoch{epoch}"
                cell = experiment / run["name"] / "eval" / name
                (cell / "logs").mkdir(parents=True, exist_ok=True)
                script_file = Path(task["script"]).name
                task_script = f"{task['script']}@{TASK_OF_SCRIPT[script_file]}"
                data_path = data_path_for(doc, task, run)
                split = EXPLICIT_SPLIT.get(task_name)
                model_path = (f"{exp}/{run['name']}/epoch_{epoch}" if epoch is not None else model_info["path"])
                eval_yaml = {
                    "task_script": task_script, "task_name": task_name, "model_path": model_path,
                    "data_path": data_path, "epoch": epoch, "vis_label": row["vis_label"],
                    "use_chat_template": True, "prompt": "{input}", "system_prompt": "",
                    "scorer": [{"name": "match"}],
                }
                if split is not None:
                    eval_yaml["split"] = split
                (cell / "eval.yaml").write_text(yaml.safe_dump(eval_yaml, sort_keys=False))
                (cell / "cell.slurm").write_text(cell_slurm(str(cell), task_script, data_path, split, model,
                                                            model_path, setup, f"{run['name']}-{name}"))
                scaffold.cells[f"{run['name']}/{name}"] = cell
    return scaffold
