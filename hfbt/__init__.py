"""hfbt: Hugging Face repos as private torrents inside a cluster."""

__version__ = "0.1.0"
