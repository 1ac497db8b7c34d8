"""Synthetic scores tables with the structure of real LLM scores, for tests and examples.

Generative model (per task t, per LLM l, per item i with true class y_i drawn from the task's class prior):

- the LLM observes ``x_li = skill_lt * onehot(y_i) + N(0, I)``; the calibrated class logits given that observation
  are ``z_li = skill_lt * x_li + log prior`` (the exact posterior of this Gaussian model), so ``softmax(z)`` is
  perfectly calibrated and ``skill`` is how well the LLM separates the classes on that task;
- the LLM *reports* ``temperature_lf * z_li + bias_lf`` with a temperature > 1 (over-confident) and a bias toward
  one class, both depending on the LLM and the task's family (tasks of a family share their miscalibration,
  which is what makes SIM-OOT calibration better than ALL-OOT);
- the answer is the argmax of the reported logits; the cost of a call is the LLM's base cost (rising from the
  first LLM to the last) times a small log-normal jitter.

Tasks are named ``<family>_<k>`` and come in families (spam, sentiment, topic, ...) with one-sentence
descriptions; :func:`synthetic_embeddings` gives description-like embeddings (family direction + noise) for
tests that should not load a sentence-embedding model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ls_backend.scores import ScoresTable, TaskScores

FAMILY_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "spam": (
        "Is this SMS message spam?",
        "Is this email an unsolicited advertisement or a scam?",
        "Is this text message a phishing attempt?",
    ),
    "sentiment": (
        "Is this movie review positive?",
        "Is this product review positive?",
        "Does this tweet express a positive opinion?",
    ),
    "topic": (
        "Is this news article about sport?",
        "Is this news article about business?",
        "Is this news article about politics?",
    ),
    "question": (
        "Is this question asking for a location?",
        "Is this question asking for a number?",
        "Is this question asking about a person?",
    ),
}
"""Task families and their descriptions; synthetic tasks cycle through the families."""

DEFAULT_LLMS = ("small-llm", "medium-llm", "large-llm")


def make_synthetic_scores(
    n_tasks: int = 6,
    n_items: int = 400,
    classes: Sequence[str] = ("yes", "no"),
    llms: Sequence[str] = DEFAULT_LLMS,
    seed: int = 0,
    *,
    n_families: int = 3,
    labeled_fraction: float = 1.0,
    skills: Sequence[float] | None = None,
    temperatures: Sequence[float] | None = None,
    base_costs: Sequence[float] | None = None,
    name_prefix: str = "",
) -> ScoresTable:
    """A scores table of ``n_tasks`` tasks x ``n_items`` items x ``len(llms)`` LLMs (see the module docstring).

    Args:
        classes: the class list of every task (more than two gives a multi-class table).
        llms: LLM names, cheapest first.
        n_families: how many task families (at most ``len(FAMILY_DESCRIPTIONS)``); task k is in family
            ``k % n_families``.
        labeled_fraction: the share of items with a label (the others get -1), chosen at random.
        skills: mean class separation of each LLM (default rising from 0.8 to 2.0 across the LLMs); each task
            multiplies it by a random factor in [0.6, 1.4].
        temperatures: mean over-confidence of each LLM (default falling from 2.5 to 1.5; 1 is calibrated).
        base_costs: mean cost per call of each LLM (default 0.2 x 3**l).
        name_prefix: prepended to every task name (to combine several tables without clashes).
    """
    classes = tuple(str(c) for c in classes)
    llms = tuple(str(m) for m in llms)
    n_classes, n_llms = len(classes), len(llms)
    if n_classes < 2 or len(set(classes)) != n_classes:
        raise ValueError(f"classes must be at least 2 distinct names, got {list(classes)}")
    if n_llms < 1 or len(set(llms)) != n_llms:
        raise ValueError(f"llms must be at least one distinct name, got {list(llms)}")
    if n_tasks < 1 or n_items < 1:
        raise ValueError(f"n_tasks and n_items must be >= 1, got {n_tasks} and {n_items}")
    if not 1 <= n_families <= len(FAMILY_DESCRIPTIONS):
        raise ValueError(f"n_families must be in [1, {len(FAMILY_DESCRIPTIONS)}], got {n_families}")
    if not 0.0 <= labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in [0, 1], got {labeled_fraction}")
    skill = _per_llm(skills, np.linspace(0.8, 2.0, n_llms), n_llms, "skills")
    temperature = _per_llm(temperatures, np.linspace(2.5, 1.5, n_llms), n_llms, "temperatures")
    base_cost = _per_llm(base_costs, 0.2 * 3.0 ** np.arange(n_llms), n_llms, "base_costs")

    rng = np.random.default_rng(seed)
    families = list(FAMILY_DESCRIPTIONS)[:n_families]
    # Miscalibration shared by the tasks of a family: temperature factor and a bias toward one class.
    family_temperature = temperature[:, None] * np.exp(rng.normal(0.0, 0.25, size=(n_llms, n_families)))
    family_bias = rng.normal(0.0, 1.0, size=(n_llms, n_families, n_classes))

    table = ScoresTable()
    for t in range(n_tasks):
        f = t % n_families
        family = families[f]
        variant = t // n_families
        templates = FAMILY_DESCRIPTIONS[family]
        description = templates[variant % len(templates)]
        if variant >= len(templates):
            description = f"{description} (variant {variant // len(templates) + 1})"
        prior = rng.dirichlet(np.full(n_classes, 4.0))
        labels = rng.choice(n_classes, size=n_items, p=prior)
        task_skill = skill[:, None] * rng.uniform(0.6, 1.4, size=(n_llms, 1))  # (L, 1)
        observed = task_skill[:, :, None] * np.eye(n_classes)[labels][None] + rng.normal(
            size=(n_llms, n_items, n_classes)
        )
        calibrated = task_skill[:, :, None] * observed + np.log(prior)
        temperature_t = family_temperature[:, f] * np.exp(rng.normal(0.0, 0.05, size=n_llms))
        logits = temperature_t[:, None, None] * calibrated + family_bias[:, None, f, :]
        costs = base_cost[:, None] * np.exp(rng.normal(0.0, 0.1, size=(n_llms, n_items)))
        unlabeled = rng.random(n_items) >= labeled_fraction
        name = f"{name_prefix}{family}_{variant}"
        table.tasks[name] = TaskScores(
            name=name,
            classes=classes,
            items=np.array([str(i) for i in range(n_items)], dtype=object),
            labels=np.where(unlabeled, -1, labels).astype(np.int64),
            llms=llms,
            logits=logits,
            answers=logits.argmax(axis=-1).astype(np.int64),
            costs=costs,
            description=description,
        )
    return table


def task_family(task_name: str) -> str:
    """The family of a task made by :func:`make_synthetic_scores` (its name without prefix and ``_<k>``)."""
    stem = task_name.rsplit("_", 1)[0]
    for family in FAMILY_DESCRIPTIONS:
        if stem.endswith(family):
            return family
    raise ValueError(f"{task_name!r} is not the name of a synthetic task")


def synthetic_embeddings(
    task_names: Sequence[str], dim: int = 16, noise: float = 0.1, seed: int = 0
) -> np.ndarray:
    """Unit vectors standing in for description embeddings: one direction per family plus Gaussian noise."""
    families = list(FAMILY_DESCRIPTIONS)
    if dim < len(families):
        raise ValueError(f"dim must be >= {len(families)}, got {dim}")
    rng = np.random.default_rng(seed)
    directions = np.eye(len(families), dim)
    x = directions[[families.index(task_family(name)) for name in task_names]]
    x = x + rng.normal(0.0, noise, size=x.shape)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_item_embeddings(
    labels: np.ndarray, n_classes: int, dim: int = 16, noise: float = 0.6, seed: int = 0
) -> np.ndarray:
    """Unit vectors standing in for item embeddings (n, dim): a random unit direction per class plus Gaussian noise
    of ``noise`` per coordinate (an unlabeled item, label -1, gets noise alone), so that a classifier on them learns
    the labels from some dozens of examples, as the student does on MiniLM embeddings."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_classes, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    labels = np.asarray(labels)
    x = np.where((labels >= 0)[:, None], directions[np.maximum(labels, 0)], 0.0)
    x = x + rng.normal(0.0, noise, size=(labels.size, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _per_llm(values: Sequence[float] | None, default: np.ndarray, n_llms: int, name: str) -> np.ndarray:
    if values is None:
        return default
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n_llms,) or not np.isfinite(array).all() or (array <= 0).any():
        raise ValueError(f"{name} must be {n_llms} positive numbers (one per LLM), got {list(values)}")
    return array
