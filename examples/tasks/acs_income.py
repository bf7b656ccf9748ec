"""Income above $50k? (the bundled example's `acs_income` task; cruijff_kit's shape).

    cd examples && inspect eval tasks/acs_income.py --model mockllm/model -T data_path=data/acs.json
"""

import yaml
from inspect_ai import Task, task
from inspect_ai.dataset import Sample, hf_dataset
from inspect_ai.scorer import match
from inspect_ai.solver import generate, system_message


@task
def acs_income(data_path: str, config_path: str = "", split: str = "test") -> Task:
    system_prompt = "Answer yes or no."
    if config_path:
        with open(config_path) as f:
            system_prompt = (yaml.safe_load(f) or {}).get("system_prompt", system_prompt)

    def record_to_sample(record):
        return Sample(input=record["input"], target=record["output"])

    dataset = hf_dataset(
        path="json",
        data_files=data_path,
        field=split,
        split="train",
        sample_fields=record_to_sample,
    )
    return Task(dataset=dataset, solver=[system_message(system_prompt), generate()], scorer=match())
