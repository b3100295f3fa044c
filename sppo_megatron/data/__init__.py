"""Prompt data: verl-schema parquet datasets, resumable sampling, and dataset preparation helpers."""

from sppo_megatron.data.dataset import PromptDataset, PromptItem, load_prompt_dataset
from sppo_megatron.data.sampler import PromptSampler

__all__ = ["PromptItem", "PromptDataset", "load_prompt_dataset", "PromptSampler"]
