"""A real inspect-ai task for the `inspect eval` recipe test (tests/test_slurm_e2e.py).

It reads its samples with hf_dataset exactly as the manifest records the call. The solver
copies each sample's target into the output instead of calling the model: inspect's
mockllm/model would otherwise count tokens with tiktoken, which downloads its encoding on
first use, and this machine has no network. Everything else is a real `inspect eval`.
"""

from inspect_ai import Task, task
from inspect_ai.dataset import Sample, hf_dataset
from inspect_ai.scorer import match
from inspect_ai.solver import Generate, TaskState, solver


@solver
def echo_target():
    async def solve(state: TaskState, generate: Generate) -> TaskState:
        state.output.completion = state.target.text
        return state

    return solve


@task
def echo(data_path: str, config_path: str = "", split: str = "test"):  # the client's parameters
    dataset = hf_dataset(path="json", data_files=data_path, field=split, split="train",
                         sample_fields=lambda r: Sample(input=str(r["input"]), target=str(r["output"])))
    return Task(dataset=dataset, solver=echo_target(), scorer=match())
