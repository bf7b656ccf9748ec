"""cluster-agent: pre-build the dataset caches an eval sweep reads, then gate its launch."""

__version__ = "0.1.0"
