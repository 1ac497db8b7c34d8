"""The public benchmark's studies: code that measures the product on the benchmark's scores and LLMs.

The reproduction of the paper (``lwc reproduce``, :mod:`ls_backend.benchmark.reproduce`) is made of
:mod:`~ls_backend.benchmark.settings`, :mod:`~ls_backend.benchmark.inputs`, :mod:`~ls_backend.benchmark.reliability`,
:mod:`~ls_backend.benchmark.noise_floor`, :mod:`~ls_backend.benchmark.diagnostics`,
:mod:`~ls_backend.benchmark.answer_check`, :mod:`~ls_backend.benchmark.table3_runner` (the per-task Table 3 runner
that ``lwc cascade-report`` uses too), :mod:`~ls_backend.benchmark.table3`, :mod:`~ls_backend.benchmark.claims`,
:mod:`~ls_backend.benchmark.report`, :mod:`~ls_backend.benchmark.prose` and :mod:`~ls_backend.benchmark.figures`.
It reports the studies of :mod:`~ls_backend.benchmark.prompt_study` (the grid of prompt variants each packaged LLM
is scored with and the rule that picks each LLM's default) and :mod:`~ls_backend.benchmark.answers` (what the
product serves, before and with labels). :mod:`~ls_backend.benchmark.cost_weight`,
:mod:`~ls_backend.benchmark.measure_costs`, :mod:`~ls_backend.benchmark.precision_guard` and
:mod:`~ls_backend.benchmark.flops` are the measuring parts of the scripts of the same names.
"""
