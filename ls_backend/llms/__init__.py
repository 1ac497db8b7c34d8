"""LLM adapters: prompt templates, the Hugging Face local adapter, packaged models, config-built LLM lists.

Importing this package is cheap (no torch); the adapters import their heavy dependencies when used.
"""

from ls_backend.llms.base import COST_UNITS, LLM, CostModel, LLMError, ScoredBatch
from ls_backend.llms.prompts import DEFAULT_TEMPLATE, PromptError, PromptTemplate

__all__ = [
    "COST_UNITS",
    "DEFAULT_TEMPLATE",
    "LLM",
    "CostModel",
    "LLMError",
    "PromptError",
    "PromptTemplate",
    "ScoredBatch",
]
