"""Two-digit sums (the bundled example's `arithmetic` task). The data is JSON Lines, one
record per line and no top-level fields, so this task takes no `split`.

    cd examples && inspect eval tasks/arithmetic.py --model mockllm/model -T data_path=data/arith.jsonl
"""

from inspect_ai import Task, task
from inspect_ai.dataset import Sample, hf_dataset
from inspect_ai.scorer import match
from inspect_ai.solver import generate


@task
def arithmetic(data_path: str, config_path: str = "") -> Task:
    def record_to_sample(record):
        return Sample(input=record["input"], target=record["output"])

    dataset = hf_dataset(path="json", data_files=data_path, split="train", sample_fields=record_to_sample)
    return Task(dataset=dataset, solver=generate(), scorer=match())
