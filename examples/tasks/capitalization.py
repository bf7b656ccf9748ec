"""Capitalize each word (the bundled example's `capitalization*` tasks).

The shape of cruijff_kit's task scripts: `data_path` is the JSON file, `split` the
top-level field to read, `config_path` an optional eval.yaml with prompts. Run it with a
model that needs no network:

    cd examples && inspect eval tasks/capitalization.py --model mockllm/model \
        -T data_path=data/words.json
"""

import yaml
from inspect_ai import Task, task
from inspect_ai.dataset import Sample, hf_dataset
from inspect_ai.scorer import match
from inspect_ai.solver import generate, system_message


@task
def capitalization(data_path: str, config_path: str = "", split: str = "test") -> Task:
    prompt, system_prompt = "{input}", "Capitalize every word."
    if config_path:
        with open(config_path) as f:
            config = yaml.safe_load(f) or {}
        prompt = config.get("prompt", prompt)
        system_prompt = config.get("system_prompt", system_prompt)

    def record_to_sample(record):
        return Sample(input=prompt.format(input=record["input"]), target=record["output"])

    dataset = hf_dataset(
        path="json",
        data_files=data_path,
        field=split,
        split="train",  # a JSON file is one "train" split; `field` picks the part
        sample_fields=record_to_sample,
    )
    return Task(dataset=dataset, solver=[system_message(system_prompt), generate()], scorer=match())
