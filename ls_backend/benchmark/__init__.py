"""The public benchmark's studies: code that measures the product on the benchmark's scores and LLMs.

- :mod:`ls_backend.benchmark.prompt_study`: the grid of prompt variants each packaged LLM is scored with, the
  metrics of each variant on a fixed subsample of every task, and the rule that picks each LLM's default.
"""
