"""consumer=datasets: jobs call datasets.load_dataset(builder, data_files=..., field=..., split=...).

Only the HF `datasets` cache layer is read, so only it is built; the base class is this
consumer.
"""

from agent.consumers import Consumer

CONSUMER = Consumer()
