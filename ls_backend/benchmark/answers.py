"""Answer quality on the benchmark: what each LLM and the served cascade answer before any in-task label and with
20, 50 or 100 of them, on balanced and natural-ratio tasks, beside the paper's method and a supervised anchor.

A **recipe** is one way of serving (:class:`Recipe`): a label-free correction (``none``, ``CC``, ``BC``), a
calibrator (``ST``, ``SV``) and an answer rule (``llm``, ``calibrated``). The paper's method as the product ran it
is ``none/ST/llm``.

**Before any in-task label** the model is exactly what the backend serves a new project
(:func:`ls_backend.server.oot.build_oot_model`): the benchmark plays a project whose question and description are
the target task's, with every other task of the table as the out-of-task scores (leave one task out; the natural
variant of a task leaves its balanced source out too), SIM-OOT sources by clusters of description embeddings,
out-of-task calibrators on the sources' corrected logits, Algorithm 1 on their pooled items. The project's own
correction is then chained in front, as :mod:`ls_backend.server.corrections` does: CC from the target's
content-free scores; BC fitted, for each LLM, on the items that reached it (staged: the cheapest LLM sees every
item, a costlier one only those the cascade sends it), as a project that has predicted all its items.

**With k in-task labels** (``repeats`` seeded uniform draws of k labeled items; for the paper's recipe and for the
recipe chosen before labels, with each calibrator), the learning loop's fit
(:func:`ls_backend.loop.fitting.fit_in_task_model`) on them, after the same corrections; measured on the other
items. The **anchor** is logistic regression (scikit-learn, L2, C = 1) on the all-MiniLM-L6-v2 embeddings of the
same labeled items.

**Natural-ratio tasks** (:data:`ls_backend.datasets.NATURAL_SHARES`): a balanced task whose source is imbalanced is
also measured on its items at the source's class ratio: every "no" item and the first "yes" items in file order up
to that share (:func:`natural_view`). A correction that forces balanced answers looks good on balanced tasks and
hurts there; :func:`selection_score` weighs both (balanced accuracy, natural macro-F1).

Metrics per (view, method, labels): accuracy, F1 (binary: of "yes"; multi-class: macro), ACE of the served score,
cost per item (the costs in the table) and how many LLMs were asked on average.

**Cost frontiers** (:class:`FrontierRun`): at :data:`FRONTIER_LABELS` labels, on the balanced binary tasks, each
draw's fit of the LLM cascade and of the cascade with the student also gets its exact accuracy/cost frontier
(:func:`ls_backend.ensemble.frontier.cost_frontier` on the fit items, with the fit's calibrated answers, scores, bin
edges and costs: no further tuning), every frontier policy measured on the held-out items as the served one is.
:func:`learning_curve` and :func:`student_frontier` are what the reproduction's two student figures draw. Numpy in,
numpy out; no file I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ls_backend import metrics
from ls_backend.calibration import BiasCorrection, Calibrator, corrected, single_threaded_blas
from ls_backend.ensemble.classification import precision_recall_f1
from ls_backend.loop.fitting import InTaskFit, InTaskSettings, fit_correction, fit_in_task_model
from ls_backend.loop.model import ServingModel, answers_and_scores
from ls_backend.scores import ScoresTable, TaskScores

CORRECTIONS = ("none", "CC", "BC")
CALIBRATORS = ("ST", "SV")
ANSWERS = ("llm", "calibrated")
LABEL_COUNTS = (0, 10, 20, 50, 100, 200)
ANCHOR = "anchor"
CASCADE = "cascade"
STUDENT = "student"
WITH_STUDENT = "cascade+student"
FRONTIER_LABELS = 50
"""The label count at which the cascades' cost frontiers are traced: the student's table shows the cascade with the
student well past the student alone there, while the student already answers most items."""
FRONTIER_BUDGETS = np.geomspace(1e-3, 1.1, 96)
"""The budgets of the frontier figure, as shares of the cost of asking every LLM (log-spaced: the student's
policies cost a few hundredths of it)."""


@dataclass(frozen=True)
class Recipe:
    """A way of serving: a label-free correction, a calibrator and an answer rule."""

    correction: str
    calibrator: str
    answer: str

    @property
    def name(self) -> str:
        return f"{self.correction}/{self.calibrator}/{self.answer}"

    @classmethod
    def from_name(cls, name: str) -> Recipe:
        correction, calibrator, answer = name.split("/")
        return cls(correction, calibrator, answer)


PAPER = Recipe("none", "ST", "llm")
RECIPES = tuple(Recipe(c, k, a) for c in CORRECTIONS for k in CALIBRATORS for a in ANSWERS)


@dataclass(frozen=True)
class TaskView:
    """A task as measured: all of its items (``balanced``) or its natural-ratio subset (``natural``)."""

    name: str
    task: str
    variant: str
    index: np.ndarray
    binary: bool = True


def natural_view(task: TaskScores, share: float) -> TaskView:
    """Every "no" item of a balanced yes/no task and the first "yes" items (file order) up to ``share`` of yes."""
    if not 0.0 < share < 0.5:
        raise ValueError(f"a natural share of yes must be in (0, 0.5), got {share}")
    yes = list(task.classes).index("yes")
    no_items = np.flatnonzero((task.labels >= 0) & (task.labels != yes))
    yes_items = np.flatnonzero(task.labels == yes)
    n_yes = min(len(yes_items), round(len(no_items) * share / (1.0 - share)))
    index = np.sort(np.concatenate([no_items, yes_items[:n_yes]]))
    return TaskView(f"{task.name} (natural)", task.name, "natural", index)


def task_views(table: ScoresTable, natural_shares: Mapping[str, float]) -> list[TaskView]:
    """Every task of the table (balanced), then the natural-ratio view of each task in ``natural_shares``."""
    views = [
        TaskView(t.name, t.name, "balanced", np.flatnonzero(t.labels >= 0), is_binary(t.classes))
        for t in table
    ]
    views += [
        natural_view(table[name], share) for name, share in natural_shares.items() if name in table.tasks
    ]
    return views


def is_binary(classes: Sequence[str]) -> bool:
    return set(classes) == {"yes", "no"}


# ------------------------------------------------------------------------------------------------ metrics


def outcome(
    predictions: np.ndarray, scores: np.ndarray, labels: np.ndarray, classes: Sequence[str], costs: np.ndarray,
    depth: np.ndarray | None = None, ace_bins: int = 10,
) -> dict[str, float]:  # fmt: skip
    """Accuracy, F1, ACE of the served scores (NaN without enough items), cost and depth per item."""
    hits = predictions == labels
    positive = list(classes).index("yes") if is_binary(classes) else None
    f1 = precision_recall_f1(labels, predictions, len(classes), positive_class=positive)["f1"]
    macro = precision_recall_f1(labels, predictions, len(classes))["f1"]
    bins = min(ace_bins, labels.size // 10)
    return {
        "accuracy": float(hits.mean()),
        "f1": float(f1),
        "macro_f1": float(macro),
        "ace": metrics.ace(np.clip(scores, 0.0, 1.0), hits, bins) if bins >= 2 else float("nan"),
        "cost": float(np.mean(costs)),
        "depth": float(np.mean(depth)) if depth is not None else 1.0,
        "deeper_share": float(np.mean(depth > 1)) if depth is not None else 0.0,
        "yes_share": float((predictions == positive).mean()) if positive is not None else float("nan"),
    }


# ------------------------------------------------------------------------------------------------ serving


def staged_cascade(
    model: ServingModel,
    logits: np.ndarray,
    answers: np.ndarray,
    costs: np.ndarray,
    correction_of: Callable[[int, np.ndarray], BiasCorrection | None],
) -> Any:
    """The cascade (Algorithm 2) over known outputs, with LLM k's correction fitted when the items reaching it are
    known: ``correction_of(k, items)``, chained in front of ``model``'s calibrators (which have none)."""
    base = list(model.calibrators)
    live = ServingModel(model.llms, model.classes, base, model.policy, model.answer)

    def score_llm(k: int, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        live.calibrators[k] = corrected(correction_of(k, items), base[k])
        return answers[k, items], logits[k, items], costs[k, items]

    return live.predict_staged(score_llm, logits.shape[1])


def single_llm_outcome(
    calibrator: Calibrator, logits: np.ndarray, llm_answers: np.ndarray, rule: str, labels: np.ndarray,
    classes: Sequence[str], costs: np.ndarray,
) -> dict[str, float]:  # fmt: skip
    probs = np.clip(calibrator.predict_proba(logits), 0.0, 1.0)
    predictions, scores = answers_and_scores(probs, llm_answers, rule)
    return outcome(predictions, scores, labels, classes, costs)


@dataclass
class AnswerStudy:
    """Per (view, method, labels): the mean over repeats of each metric, and the per-repeat values.

    ``method`` is ``cascade:<recipe>``, ``<llm>:<recipe>`` or ``anchor``; ``labels`` is the number of in-task
    labels (0: out-of-task model).
    """

    views: list[TaskView] = field(default_factory=list)
    results: dict[tuple[str, str, int], dict[str, float]] = field(default_factory=dict)
    repeats: dict[tuple[str, str, int], list[dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    frontiers: dict[tuple[str, str], list[FrontierRun]] = field(default_factory=dict)
    """(view, method) -> one cost frontier per draw at :data:`FRONTIER_LABELS` labels (balanced binary views; the
    LLM cascade of every in-task recipe and the cascade with the student)."""
    tunings_cut_short: int = 0
    """In-task fits whose bin-edge tuning stopped at its time cap before its trials (``tuning_timeout_s``): their
    numbers depend on the machine's speed."""

    def add(self, view: str, method: str, labels: int, values: Sequence[dict[str, float]]) -> None:
        self.repeats[view, method, labels] = list(values)
        keys = values[0].keys()
        self.results[view, method, labels] = {
            k: float(np.nanmean([v[k] for v in values]))
            if not all(np.isnan(v[k]) for v in values)
            else float("nan")
            for k in keys
        }

    def merge(self, part: AnswerStudy) -> None:
        """Add the results of a study of other views (a worker's part), keeping their order."""
        self.results.update(part.results)
        self.repeats.update(part.repeats)
        self.frontiers.update(part.frontiers)
        self.notes += part.notes
        self.tunings_cut_short += part.tunings_cut_short

    def count_tuning(self, fitted: InTaskFit, settings: InTaskSettings) -> None:
        trials = fitted.tuning.get("n_trials", 0)
        self.tunings_cut_short += int(0 < trials < settings.n_trials)

    def mean(self, views: Sequence[str], method: str, labels: int, metric: str) -> float:
        values = [
            self.results[v, method, labels][metric] for v in views if (v, method, labels) in self.results
        ]
        return float(np.nanmean(values)) if values else float("nan")


def selection_score(study: AnswerStudy, method: str, labels: int) -> float:
    """How a recipe is chosen: half the mean accuracy over the balanced binary tasks plus half the mean macro-F1
    over the natural-ratio tasks. Macro-F1 there, not accuracy: answering the majority class to every item scores
    0.85 accuracy on a task with 15% "yes" while telling nothing, and forcing half "yes" answers is penalized too."""
    balanced = [v.name for v in study.views if v.variant == "balanced" and v.binary]
    natural = [v.name for v in study.views if v.variant == "natural"]
    families = [
        study.mean(balanced, method, labels, "accuracy"),
        study.mean(natural, method, labels, "macro_f1"),
    ]
    measured = [f for f in families if np.isfinite(f)]  # a table without natural-ratio tasks: balanced alone
    return float(np.mean(measured)) if measured else float("nan")


# ------------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class StudySettings:
    """Label counts, repeats, seed, bins and clusters of the answer study."""

    label_counts: tuple[int, ...] = LABEL_COUNTS
    repeats: int = 10
    seed: int = 0
    n_bins: int = 5
    n_clusters: int = 4
    recipes: tuple[Recipe, ...] = RECIPES
    in_task_recipes: tuple[Recipe, ...] | None = None
    """None: the paper's recipe and the recipe chosen before labels with each calibrator."""
    ace_bins: int = 10
    served: Recipe | None = None
    """The product's recipe: measured with labels with each calibrator as well, where it is not the chosen one."""
    cost_weight: float = 0.0
    """The learning loop's ``cost_weight`` (:class:`ls_backend.loop.fitting.InTaskSettings`) for every in-task fit
    but the paper's recipe (whose policy is the paper's hits-only Algorithm 1)."""


def run_answer_study(
    table: ScoresTable,
    texts: Mapping[str, str],
    embed: Callable[[Sequence[str]], np.ndarray],
    content_free: ScoresTable | None,
    item_embeddings: Mapping[str, np.ndarray] | None,
    natural_shares: Mapping[str, float],
    settings: StudySettings = StudySettings(),
    progress: Callable[[str], None] | None = None,
    student_costs: Mapping[str, float] | None = None,
    n_jobs: int = 1,
) -> AnswerStudy:
    """The answer study over every view of ``table`` (see the module docstring). With ``n_jobs`` > 1 the views'
    work with in-task labels runs in that many worker processes: the same numbers, in the same order (each view's
    draws and fits are seeded by its name and settings).

    Args:
        table: the benchmark's scores (costs already set to what the study should count).
        texts: each task's question and description (what SIM-OOT embeds).
        embed: embeds texts (task descriptions) for SIM-OOT.
        content_free: the content-free scores of every (task, LLM) (None: CC recipes are skipped).
        item_embeddings: per task, the sentence embeddings of its items (n, d) in table order (None: no anchor).
        natural_shares: the share of "yes" of each task's source, for its natural-ratio view.
    """

    with single_threaded_blas(), _worker_pool(n_jobs) as pool:
        return _run(
            table,
            texts,
            embed,
            content_free,
            item_embeddings,
            natural_shares,
            settings,
            progress,
            student_costs,
            pool,
        )


@contextmanager
def _worker_pool(n_jobs: int) -> Iterator[Any]:
    """Spawned worker processes (None for ``n_jobs`` <= 1): not forked, as this process may hold BLAS threads."""
    if n_jobs <= 1:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ls_backend.loop.tuning import quiet_optuna

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context, initializer=quiet_optuna) as pool:
        yield pool


@dataclass(frozen=True)
class _ViewJob:
    """One view's work with in-task labels, all that a worker process needs: its outputs, the recipes and their
    corrections, the items' embeddings (None: no anchor, no student) and the student's cost."""

    target: _Target
    recipes: tuple[Recipe, ...]
    corrections: tuple[Sequence[BiasCorrection | None], ...]
    vectors: np.ndarray | None
    settings: StudySettings
    student_cost: float | None = None


def _with_labels(job: _ViewJob) -> AnswerStudy:
    """A view's fits on in-task labels for each recipe, and the anchor."""
    part = AnswerStudy()
    with single_threaded_blas():
        for recipe, corrections in zip(job.recipes, job.corrections, strict=True):
            _in_task(part, job.target, recipe, corrections, job.settings)
        if job.vectors is not None:
            t = job.target
            for n_labels, draws in _draws(t, job.settings):
                runs = [anchor_outcome(job.vectors, t.labels, fit, rest, t.classes, job.settings.ace_bins)
                        for fit, rest in draws]  # fmt: skip
                part.add(t.view.name, ANCHOR, n_labels, runs)
    return part


def _student_part(job: _ViewJob) -> AnswerStudy:
    """A view's student alone and cascade with the student, with the job's one recipe."""
    part = AnswerStudy()
    assert job.vectors is not None and job.student_cost is not None
    with single_threaded_blas():
        _with_student(part, job.target, job.recipes[0], job.corrections[0], job.vectors, job.student_cost,
                      job.settings)  # fmt: skip
    return part


def _each(
    work: Callable[[_ViewJob], AnswerStudy], jobs: Iterable[_ViewJob], pool: Any
) -> Iterator[AnswerStudy]:
    """Each job's part, in job order: here, or in the worker pool."""
    return map(work, jobs) if pool is None else pool.map(work, jobs, chunksize=1)


def _run(
    table: ScoresTable, texts: Mapping[str, str], embed: Callable[[Sequence[str]], np.ndarray],
    content_free: ScoresTable | None, item_embeddings: Mapping[str, np.ndarray] | None,
    natural_shares: Mapping[str, float], settings: StudySettings, progress: Callable[[str], None] | None,
    student_costs: Mapping[str, float] | None = None, pool: Any = None,
) -> AnswerStudy:  # fmt: skip
    from ls_backend.server.oot import OOTScores

    study = AnswerStudy(views=task_views(table, natural_shares))
    recipes = [r for r in settings.recipes if r.correction != "CC" or content_free is not None]
    if content_free is None:
        study.notes.append("no content-free scores: the CC recipes were not measured")
    targets = {view.name: _Target.of(table[view.task], view, content_free) for view in study.views}
    corrections: dict[tuple[str, Recipe], list[BiasCorrection | None]] = {}
    for view in study.views:  # 1: every recipe before any in-task label
        others = ScoresTable({t.name: t for t in table if t.name != view.task})
        oot_scores = OOTScores.in_memory(others, texts, content_free)
        for recipe in recipes:
            corrections[view.name, recipe] = _out_of_task(
                study, targets[view.name], recipe, oot_scores, texts, embed, settings
            )
        if progress is not None:
            progress(f"{view.name} (before labels)")
    # 2: with in-task labels, the paper's recipe and the chosen one with each calibrator
    chosen = choose_recipe(study, 0, recipes)
    served = [settings.served] if settings.served is not None else []
    in_task = settings.in_task_recipes or tuple(
        dict.fromkeys(
            [PAPER, *(Recipe(r.correction, c, r.answer) for r in (chosen, *served) for c in CALIBRATORS)]
        )
    )
    measured = tuple(r for r in in_task if r in recipes)

    def vectors_of(view: TaskView) -> np.ndarray | None:
        if item_embeddings is None or view.task not in item_embeddings:
            return None
        return np.asarray(item_embeddings[view.task])[view.index]

    jobs = (_ViewJob(targets[v.name], measured, tuple(corrections[v.name, r] for r in measured), vectors_of(v),
                     settings) for v in study.views)  # fmt: skip
    for view, part in zip(study.views, _each(_with_labels, jobs, pool), strict=True):
        study.merge(part)
        if progress is not None:
            progress(f"{view.name} (with labels)")
    # 3: the student as the cascade's member 0, with the served in-task recipe
    if item_embeddings is not None and student_costs is not None:
        calibrator = choose_in_task_calibrator(study, chosen, 50)
        recipe = Recipe(chosen.correction, calibrator, chosen.answer)
        jobs = (_ViewJob(targets[v.name], (recipe,), (corrections[v.name, recipe],), vectors_of(v), settings,
                         float(student_costs[v.task]))
                for v in study.views if v.task in item_embeddings and v.task in student_costs)  # fmt: skip
        for part in _each(_student_part, jobs, pool):
            study.merge(part)
    return study


@dataclass(frozen=True)
class _Target:
    """One view's outputs: logits (L, n, C), the LLMs' answers and costs (L, n), labels (n,), content-free logits."""

    view: TaskView
    llms: tuple[str, ...]
    classes: tuple[str, ...]
    logits: np.ndarray
    answers: np.ndarray
    labels: np.ndarray
    costs: np.ndarray
    content_free: tuple[np.ndarray | None, ...]

    @classmethod
    def of(cls, task: TaskScores, view: TaskView, content_free: ScoresTable | None) -> _Target:
        i = view.index
        cf = tuple(_content_free(content_free, task.name, llm, task.classes) for llm in task.llms)
        return cls(view, task.llms, task.classes, task.logits[:, i], task.answers[:, i], task.labels[i],
                   task.costs[:, i], cf)  # fmt: skip

    def correction(self, name: str, k: int, items: np.ndarray | None = None) -> BiasCorrection | None:
        logits = self.logits[k] if items is None else self.logits[k, items]
        return fit_correction(name, logits, self.content_free[k])


def _out_of_task(
    study: AnswerStudy, target: _Target, recipe: Recipe, oot_scores: Any, texts: Mapping[str, str],
    embed: Callable[[Sequence[str]], np.ndarray], settings: StudySettings,
) -> list[BiasCorrection | None]:  # fmt: skip
    """The served model before any in-task label, the cascade and each LLM alone; returns the corrections each
    LLM has when the first labels arrive (fitted on the items that reached it)."""
    from ls_backend.server.config import CascadeSettings
    from ls_backend.server.oot import build_oot_model, plan_oot_model

    view = target.view
    cascade_settings = CascadeSettings.model_validate(
        {"calibrator": recipe.calibrator, "n_bins": settings.n_bins, "correction": recipe.correction,
         "answer": recipe.answer, "n_clusters": settings.n_clusters}
    )  # fmt: skip
    llms = [(m, "") for m in target.llms]
    plan = plan_oot_model(oot_scores, llms, target.classes, texts[view.task], cascade_settings)
    base = build_oot_model(plan, oot_scores, embed).model
    reached: dict[int, np.ndarray] = {}

    def correction_of(k: int, items: np.ndarray) -> BiasCorrection | None:
        reached[k] = items
        return target.correction(recipe.correction, k, items)

    served = staged_cascade(base, target.logits, target.answers, target.costs, correction_of)
    study.add(view.name, f"{CASCADE}:{recipe.name}", 0, [
        outcome(served.predictions, served.scores, target.labels, target.classes, served.costs, served.depth,
                settings.ace_bins)
    ])  # fmt: skip
    for k, llm in enumerate(target.llms):
        alone = corrected(target.correction(recipe.correction, k), base.calibrators[k])
        study.add(view.name, f"{llm}:{recipe.name}", 0, [
            single_llm_outcome(alone, target.logits[k], target.answers[k], recipe.answer, target.labels,
                               target.classes, target.costs[k])
        ])  # fmt: skip
    return [target.correction(recipe.correction, k, reached.get(k)) for k in range(len(target.llms))]


def _draws(target: _Target, settings: StudySettings) -> list[tuple[int, list[tuple[np.ndarray, np.ndarray]]]]:
    """Per label count, ``repeats`` seeded uniform draws (fit items, the other items); the same for every method."""
    n = target.labels.size
    seed = settings.seed + zlib.crc32(target.view.name.encode("utf-8"))
    out = []
    for n_labels in (c for c in settings.label_counts if c > 0 and c + 20 <= n):
        rng = np.random.default_rng([seed, n_labels])
        draws = []
        for _ in range(settings.repeats):
            fit = rng.choice(n, n_labels, replace=False)
            draws.append((fit, np.setdiff1d(np.arange(n), fit)))
        out.append((n_labels, draws))
    return out


def _traces_frontier(view: TaskView) -> bool:
    return view.variant == "balanced" and view.binary


def _in_task(
    study: AnswerStudy, target: _Target, recipe: Recipe, corrections: Sequence[BiasCorrection | None],
    settings: StudySettings,
) -> None:  # fmt: skip
    """The learning loop's fit on k in-task labels, measured on the other items: the cascade and each LLM; and the
    cascade's cost frontier of each draw at :data:`FRONTIER_LABELS` labels on a balanced binary view."""
    t = target
    frontier = _traces_frontier(t.view)
    for n_labels, draws in _draws(target, settings):
        frontiers = []
        cascade_runs: list[dict[str, float]] = []
        llm_runs: list[list[dict[str, float]]] = [[] for _ in t.llms]
        fit_settings = InTaskSettings(calibrator=recipe.calibrator,
                                      cost_weight=0.0 if recipe == PAPER else settings.cost_weight)  # fmt: skip
        for fit, rest in draws:
            fitted = fit_in_task_model(
                t.llms, t.classes, t.logits[:, fit], t.answers[:, fit], t.labels[fit], t.costs[:, fit],
                corrections, recipe.answer, fit_settings,
            )  # fmt: skip
            study.count_tuning(fitted, fit_settings)
            if frontier and n_labels == FRONTIER_LABELS:
                frontiers.append(frontier_run(fitted, t.labels[fit], t.costs[:, fit], t.logits[:, rest],
                                              t.answers[:, rest], t.costs[:, rest], t.labels[rest]))  # fmt: skip
            result = fitted.model.predict(t.logits[:, rest], t.answers[:, rest], t.costs[:, rest])
            cascade_runs.append(outcome(result.predictions, result.scores, t.labels[rest], t.classes,
                                        result.costs, result.depth, settings.ace_bins))  # fmt: skip
            for k in range(len(t.llms)):
                llm_runs[k].append(single_llm_outcome(
                    fitted.model.calibrators[k], t.logits[k, rest], t.answers[k, rest], recipe.answer,
                    t.labels[rest], t.classes, t.costs[k, rest],
                ))  # fmt: skip
        study.add(t.view.name, f"{CASCADE}:{recipe.name}", n_labels, cascade_runs)
        for k, llm in enumerate(t.llms):
            study.add(t.view.name, f"{llm}:{recipe.name}", n_labels, llm_runs[k])
        if frontiers:
            study.frontiers[t.view.name, f"{CASCADE}:{recipe.name}"] = frontiers


def _with_student(
    study: AnswerStudy, target: _Target, recipe: Recipe, corrections: Sequence[BiasCorrection | None],
    vectors: np.ndarray, cost: float, settings: StudySettings,
) -> None:  # fmt: skip
    """The student alone and the cascade with the student as member 0, fitted on the same draws as the LLM
    cascade. The policy trains on the student's out-of-fold logits (what it gives on texts it was not fitted
    on); a draw with a single class has no student (the LLM cascade serves)."""
    from ls_backend.student import NAME, EmbeddingStudent

    t = target
    members = (NAME, *t.llms)
    frontier = _traces_frontier(t.view)
    for n_labels, draws in _draws(target, settings):
        alone, together, frontiers = [], [], []
        for fit, rest in draws:
            if np.unique(t.labels[fit]).size < 2:
                continue
            student = EmbeddingStudent(len(t.classes), seed=settings.seed).fit(vectors[fit], t.labels[fit])
            rest_logits = student.logits(vectors[rest])
            logits_fit = np.concatenate([student.oof_logits_[None], t.logits[:, fit]])
            logits_rest = np.concatenate([rest_logits[None], t.logits[:, rest]])
            answers_fit = np.concatenate([student.oof_logits_.argmax(axis=1)[None], t.answers[:, fit]])
            answers_rest = np.concatenate([rest_logits.argmax(axis=1)[None], t.answers[:, rest]])
            costs_fit = np.concatenate([np.full((1, fit.size), cost), t.costs[:, fit]])
            costs_rest = np.concatenate([np.full((1, rest.size), cost), t.costs[:, rest]])
            # as the learning loop fits it: the student answers with its own argmax, the LLMs by the recipe's rule
            fit_settings = InTaskSettings(calibrator=recipe.calibrator, cost_weight=settings.cost_weight)
            fitted = fit_in_task_model(
                members, t.classes, logits_fit, answers_fit, t.labels[fit], costs_fit, [None, *corrections],
                ["llm", *([recipe.answer] * len(t.llms))], fit_settings, student=student,
            )  # fmt: skip
            study.count_tuning(fitted, fit_settings)
            result = fitted.model.predict(logits_rest, answers_rest, costs_rest)
            if frontier and n_labels == FRONTIER_LABELS:
                frontiers.append(frontier_run(fitted, t.labels[fit], costs_fit, logits_rest, answers_rest,
                                              costs_rest, t.labels[rest]))  # fmt: skip
            together.append(outcome(result.predictions, result.scores, t.labels[rest], t.classes, result.costs,
                                    result.depth, settings.ace_bins))  # fmt: skip
            probs = student.predict_proba(vectors[rest])
            alone.append(outcome(probs.argmax(axis=1), probs.max(axis=1), t.labels[rest], t.classes,
                                 np.full(rest.size, cost), ace_bins=settings.ace_bins))  # fmt: skip
        if together:
            study.add(t.view.name, f"{WITH_STUDENT}:{recipe.name}", n_labels, together)
            study.add(t.view.name, STUDENT, n_labels, alone)
        if frontiers:
            study.frontiers[t.view.name, f"{WITH_STUDENT}:{recipe.name}"] = frontiers


def anchor_outcome(
    vectors: np.ndarray,
    labels: np.ndarray,
    fit: np.ndarray,
    rest: np.ndarray,
    classes: Sequence[str],
    ace_bins: int,
) -> dict[str, float]:
    """Logistic regression (L2, C = 1) on the embeddings of the labeled items, measured on the others; a class
    absent from the draw is never predicted."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(labels[fit])
    if present.size < 2:
        predictions = np.full(rest.size, present[0])
        scores = np.ones(rest.size)
    else:
        model = LogisticRegression(C=1.0, max_iter=1000).fit(vectors[fit], labels[fit])
        probs = model.predict_proba(vectors[rest])
        predictions = model.classes_[probs.argmax(axis=1)]
        scores = probs.max(axis=1)
    return outcome(predictions, scores, labels[rest], classes, np.zeros(rest.size), ace_bins=ace_bins)


def _content_free(
    content_free: ScoresTable | None, task: str, llm: str, classes: Sequence[str]
) -> np.ndarray | None:
    if content_free is None or task not in content_free.tasks:
        return None
    cf = content_free[task]
    if llm not in cf.llms or tuple(cf.classes) != tuple(classes):
        return None
    return cf.logits[cf.llm_index(llm)]


def with_costs(table: ScoresTable, seconds: Mapping[str, Mapping[str, float]]) -> ScoresTable:
    """The table with each (LLM, task)'s cost set to ``seconds[llm][task]`` for every item."""
    tasks = {}
    for task in table:
        costs = np.stack([np.full(task.n_items, float(seconds[llm][task.name])) for llm in task.llms])
        tasks[task.name] = replace(task, costs=costs)
    return ScoresTable(tasks)


# ------------------------------------------------------------------------------------------------ cost frontiers


@dataclass(frozen=True)
class FrontierRun:
    """One draw's cost frontier, cheapest policy first. On the fit items: each policy's cost per item as a share
    of asking every LLM there, and its accuracy (what the frontier trades, both rising). On the held-out items: its
    cost per item, F1 (of "yes") and accuracy, and ``every_llm``, the cost per item of asking every LLM."""

    train_cost: np.ndarray
    train_accuracy: np.ndarray
    test_cost: np.ndarray
    test_f1: np.ndarray
    test_accuracy: np.ndarray
    every_llm: float


def frontier_run(
    fitted: InTaskFit, labels_fit: np.ndarray, costs_fit: np.ndarray, logits_rest: np.ndarray,
    answers_rest: np.ndarray, costs_rest: np.ndarray, labels_rest: np.ndarray,
) -> FrontierRun:  # fmt: skip
    """The frontier of a fitted cascade: the policies of :func:`ls_backend.ensemble.frontier.cost_frontier` trained
    on the fit's own answers, scores, bin edges and costs (no tuning), each served in place of the fitted policy on
    the held-out items. A student (member 0) counts in the cost spent, not in the cost of asking every LLM."""
    from ls_backend.ensemble.frontier import cost_frontier

    model = fitted.model
    points = cost_frontier(fitted.answers, fitted.scores, labels_fit, fitted.edges, costs_fit,
                           n_classes=len(model.classes), llms=model.llms, classes=model.classes)  # fmt: skip
    llm_rows = slice(1, None) if model.student is not None else slice(None)
    every_fit = float(np.asarray(costs_fit)[llm_rows].sum(axis=0).mean())
    measured = []
    for point in points:
        served = ServingModel(model.llms, model.classes, model.calibrators, point.policy, model.answer,
                              model.student)  # fmt: skip
        result = served.predict(logits_rest, answers_rest, costs_rest)
        measured.append(outcome(result.predictions, result.scores, labels_rest, model.classes, result.costs,
                                result.depth))  # fmt: skip
    return FrontierRun(
        train_cost=np.array([p.cost_per_item for p in points]) / every_fit,
        train_accuracy=np.array([p.accuracy for p in points]),
        test_cost=np.array([m["cost"] for m in measured]),
        test_f1=np.array([m["f1"] for m in measured]),
        test_accuracy=np.array([m["accuracy"] for m in measured]),
        every_llm=float(np.asarray(costs_rest)[llm_rows].sum(axis=0).mean()),
    )


@dataclass(frozen=True)
class FrontierCurve:
    """Per budget (a share of the cost of asking every LLM, on the fit items): the held-out cost relative to asking
    every LLM, F1 and accuracy of the policies picked within it, and their fit-item cost share and accuracy."""

    budgets: np.ndarray
    relative_cost: np.ndarray
    f1: np.ndarray
    accuracy: np.ndarray
    train_cost: np.ndarray
    train_accuracy: np.ndarray


def frontier_picks(runs_by_view: Mapping[str, Sequence[FrontierRun]], budgets: np.ndarray) -> FrontierCurve:
    """Each draw picks, per budget, its most accurate frontier policy whose fit-item cost is within the budget (its
    cheapest policy when none is); per budget, the mean over views of each view's mean over draws, the cost as the
    ratio of the mean cost to the mean cost of asking every LLM (as :func:`cost_ratio` reads the study's tables)."""
    budgets = np.asarray(budgets, dtype=np.float64)
    fields = ("test_cost", "test_f1", "test_accuracy", "train_cost", "train_accuracy")
    per_view: dict[str, list[np.ndarray]] = {f: [] for f in (*fields, "every_llm")}
    for runs in runs_by_view.values():
        if not runs:
            continue
        # the tolerance keeps a policy whose cost equals the budget up to rounding
        picks = [
            np.maximum(np.searchsorted(r.train_cost, budgets * (1 + 1e-9), side="right") - 1, 0) for r in runs
        ]
        for f in fields:
            per_view[f].append(np.mean([getattr(r, f)[i] for r, i in zip(runs, picks, strict=True)], axis=0))
        per_view["every_llm"].append(np.array(np.mean([r.every_llm for r in runs])))
    if not per_view["test_cost"]:
        raise ValueError("frontier_picks: no frontier to pick from")
    mean = {f: np.mean(values, axis=0) for f, values in per_view.items()}
    every = float(mean["every_llm"])
    return FrontierCurve(
        budgets=budgets,
        relative_cost=mean["test_cost"] / every if every > 0 else np.full(budgets.size, np.nan),
        f1=mean["test_f1"],
        accuracy=mean["test_accuracy"],
        train_cost=mean["train_cost"],
        train_accuracy=mean["train_accuracy"],
    )


# ------------------------------------------------------------------------------------------------ choices


def view_names(study: AnswerStudy, family: str) -> list[str]:
    """The views of a family: ``balanced`` (binary tasks), ``natural`` or ``multiclass``."""
    if family == "multiclass":
        return [v.name for v in study.views if not v.binary]
    return [v.name for v in study.views if v.variant == family and v.binary]


def choose_recipe(study: AnswerStudy, labels: int = 0, candidates: Sequence[Recipe] = RECIPES) -> Recipe:
    """The served cascade's recipe with the best :func:`selection_score` (ties: the first in ``candidates``)."""
    measured = [r for r in candidates if any(m == f"{CASCADE}:{r.name}" for _, m, _ in study.results)]
    if not measured:
        raise ValueError("choose_recipe: no recipe was measured")
    scores = np.array([selection_score(study, f"{CASCADE}:{r.name}", labels) for r in measured])
    return measured[int(np.argmax(np.nan_to_num(scores, nan=-np.inf)))]


def choose_in_task_calibrator(study: AnswerStudy, recipe: Recipe, labels: int = 50) -> str:
    """The in-task calibrator (ST or SV) that, with ``recipe``'s correction and answer rule, has the best
    :func:`selection_score` with ``labels`` in-task labels (ties: ST, the paper's)."""
    candidates = [Recipe(recipe.correction, c, recipe.answer) for c in CALIBRATORS]
    return choose_recipe(study, labels, candidates).calibrator


def cost_ratio(
    study: AnswerStudy, views: Sequence[str], method: str, labels: int, llms: Sequence[str]
) -> float:
    """The method's mean cost per item over ``views`` divided by the mean cost of asking every LLM."""
    recipe = method.split(":", 1)[1] if ":" in method else PAPER.name
    every = sum(study.mean(views, f"{llm}:{recipe}", labels, "cost") for llm in llms)
    return study.mean(views, method, labels, "cost") / every if every > 0 else float("nan")


# ------------------------------------------------------------------------------------------------ the report


def paired(
    study: AnswerStudy, views: Sequence[str], a: str, b: str, labels: int, metric: str = "accuracy"
) -> Any:
    """A paired Wilcoxon test of method ``a`` against ``b`` over ``views`` (each view's mean over repeats)."""
    from ls_backend.stats import wilcoxon_paired

    keep = [v for v in views if (v, a, labels) in study.results and (v, b, labels) in study.results]
    return wilcoxon_paired(
        [study.results[v, a, labels][metric] for v in keep],
        [study.results[v, b, labels][metric] for v in keep],
    )


def answers_markdown(
    study: AnswerStudy, llms: Sequence[str], served: Recipe, settings: StudySettings,
    student_from: int | None = None,
) -> tuple[str, dict[str, float]]:  # fmt: skip
    """The answer study as markdown, and the headline numbers (for the README and the tests).

    ``student_from``: the label count from which the product's cascade has the student as member 0 (the learning
    loop's ``student_min_labels``; None: never), so that the served rows are the cascade with the student there."""
    from ls_backend.markdown import fmt, markdown_table, pval

    balanced, natural, multi = (view_names(study, f) for f in ("balanced", "natural", "multiclass"))
    out: list[str] = []
    add = out.append
    chosen = choose_recipe(study, 0, settings.recipes)
    cal = choose_in_task_calibrator(study, chosen, 50)
    add(f"Recipes = label-free correction / calibrator / answer rule. Before any in-task label the calibrator is the "
        "out-of-task one (SIM-OOT, fitted on the other tasks' corrected logits) and the policy is Algorithm 1 on the "
        f"other tasks ({settings.n_bins} quantile bins per LLM), exactly as the backend builds them; with k labels, "
        f"the learning loop's fit on k uniformly drawn labels ({settings.repeats} draws), measured on the rest. "
        "Natural = the task's items at its source's class ratio. Selection score = half the mean accuracy on the "
        "balanced binary tasks plus half the mean macro-F1 on the natural-ratio tasks (where answering the majority "
        "class to every item would score high accuracy while telling nothing). Cost = the cascade's cost "
        "per item over the cost of asking all three LLMs.")  # fmt: skip
    add("")
    add("### Before any in-task label: every recipe")
    add("")
    rows = []
    for recipe in settings.recipes:
        m = f"{CASCADE}:{recipe.name}"
        if not any((v, m, 0) in study.results for v in balanced):
            continue
        label = recipe.name + (" (paper)" if recipe == PAPER else "")
        label = f"**{label}**" if recipe == chosen else label
        rows.append([
            label, fmt(selection_score(study, m, 0), 3), fmt(study.mean(balanced, m, 0, "accuracy"), 3),
            fmt(study.mean(balanced, m, 0, "f1"), 3), fmt(study.mean(balanced, m, 0, "ace"), 3),
            fmt(study.mean(natural, m, 0, "accuracy"), 3), fmt(study.mean(natural, m, 0, "f1"), 3),
            fmt(study.mean(natural, m, 0, "macro_f1"), 3), fmt(study.mean(multi, m, 0, "accuracy"), 3),
            fmt(cost_ratio(study, balanced, m, 0, llms), 2),
        ])  # fmt: skip
    add(markdown_table(["recipe", "score", "balanced acc.", "F1 (yes)", "ACE", "natural acc.", "natural F1 (yes)",
                        "natural macro-F1", "multi-class acc.", "cost"], rows))  # fmt: skip
    add("")
    add(f"Chosen by the score: **{chosen.name}** before labels; with 50 in-task labels the better calibrator for it "
        f"is **{cal}**. The product serves `{served.name}` with `{cal}` in-task"
        + ("." if (served.correction, served.answer) == (chosen.correction, chosen.answer) and served.calibrator ==
           chosen.calibrator else " (it differs from the study's choice: see the discussion).")
    )  # fmt: skip
    if not any((v, f"{CASCADE}:{served.name}", 0) in study.results for v in balanced):
        add("")
        add(f"The served recipe `{served.name}` could not be measured on this table (CC needs the content-free "
            "scores beside it), so its rows and tests below are missing.")  # fmt: skip
    add("")
    in_task = Recipe(served.correction, cal, served.answer)
    together = f"{WITH_STUDENT}:{in_task.name}"

    def served_at(n: int) -> str:
        if n == 0:
            return f"{CASCADE}:{served.name}"
        if (
            student_from is not None
            and n >= student_from
            and all((v, together, n) in study.results for v in balanced)
        ):
            return together
        return f"{CASCADE}:{in_task.name}"

    with_student = student_from is not None and any(m == together for _, m, _ in study.results)
    served_label = f"served cascade ({served.name} before labels, {in_task.name} after" + (
        f"; with the student from {student_from} labels)" if with_student else ")"
    )
    methods: list[tuple[str, Callable[[int], str]]] = [
        (served_label, served_at),
        (f"the paper's method ({PAPER.name}) cascade", lambda n: f"{CASCADE}:{PAPER.name}"),
    ]

    def alone(llm: str) -> Callable[[int], str]:
        return lambda n: f"{llm}:{served.name if n == 0 else in_task.name}"

    methods += [(f"`{llm}` alone ({in_task.name})", alone(llm)) for llm in llms]
    methods.append(("anchor: logistic regression on MiniLM embeddings", lambda n: ANCHOR))  # fmt: skip
    add("### The served cascade against the paper's method, each LLM and the supervised anchor")
    add("")
    rows = []
    for label, method_at in methods:
        first = True
        for n in settings.label_counts:
            m = method_at(n)
            if not any((v, m, n) in study.results for v in balanced):
                continue
            cost = cost_ratio(study, balanced, m, n, llms) if m != ANCHOR else float("nan")
            rows.append([label if first else "", str(n),
                         fmt(study.mean(balanced, m, n, "accuracy"), 3), fmt(study.mean(balanced, m, n, "f1"), 3),
                         fmt(study.mean(balanced, m, n, "ace"), 3), fmt(study.mean(natural, m, n, "accuracy"), 3),
                         fmt(study.mean(natural, m, n, "f1"), 3), fmt(study.mean(multi, m, n, "accuracy"), 3),
                         fmt(cost, 2)])  # fmt: skip
            first = False
    add(markdown_table(["method", "labels", "balanced acc.", "F1 (yes)", "ACE", "natural acc.", "natural F1 (yes)",
                        "multi-class acc.", "cost"], rows, [False] + [True] * 8))  # fmt: skip
    add("")
    add(f"Paired two-sided Wilcoxon tests over the {len(balanced)} balanced binary tasks (accuracy, each task's mean "
        "over draws):")  # fmt: skip
    add("")
    rows = []
    headline: dict[str, float] = {}
    for n in settings.label_counts:
        ours = served_at(n)
        headline[f"served_accuracy_{n}"] = study.mean(balanced, ours, n, "accuracy")
        headline[f"served_natural_f1_{n}"] = study.mean(natural, ours, n, "f1")
        headline[f"served_cost_ratio_{n}"] = cost_ratio(study, balanced, ours, n, llms)
        rival = [(f"{CASCADE}:{PAPER.name}", "the paper's method")]
        singles = [f"{llm}:{served.name if n == 0 else in_task.name}" for llm in llms]
        best = max(singles, key=lambda m: study.mean(balanced, m, n, "accuracy"))
        headline[f"best_single_accuracy_{n}"] = study.mean(balanced, best, n, "accuracy")
        rival.append((best, f"the best single LLM (`{best.split(':')[0]}`)"))
        if n > 0:
            rival.append((ANCHOR, "the anchor"))
            headline[f"anchor_accuracy_{n}"] = study.mean(balanced, ANCHOR, n, "accuracy")
        for other, what in rival:
            if not all((v, other, n) in study.results and (v, ours, n) in study.results for v in balanced):
                continue  # e.g. the served recipe needs content-free scores that this table does not have
            test = paired(study, balanced, ours, other, n)
            rows.append([str(n), what, fmt(study.mean(balanced, ours, n, "accuracy"), 3),
                         fmt(study.mean(balanced, other, n, "accuracy"), 3), f"{test.mean_difference:+.3f}",
                         pval(test.p_value), str(test.n_pairs)])  # fmt: skip
    headline["paper_accuracy_0"] = study.mean(balanced, f"{CASCADE}:{PAPER.name}", 0, "accuracy")
    headline["paper_natural_f1_0"] = study.mean(natural, f"{CASCADE}:{PAPER.name}", 0, "f1")
    add(markdown_table(["labels", "served cascade vs", "served", "other", "difference", "p", "pairs"], rows,
                       [True, False, True, True, True, True, True]))  # fmt: skip
    add("")
    add(
        "### Where a correction hurts: the natural-ratio tasks before any label (served cascade, accuracy / F1 of yes)"
    )
    add("")
    rows = []
    for view in natural:
        cells = [view]
        for correction in CORRECTIONS:
            m = f"{CASCADE}:{Recipe(correction, served.calibrator, served.answer).name}"
            r = study.results.get((view, m, 0))
            cells.append("-" if r is None else f"{fmt(r['accuracy'], 3)} / {fmt(r['f1'], 3)}")
        rows.append(cells)
    add(markdown_table(["task", *(f"{c}/{served.calibrator}/{served.answer}" for c in CORRECTIONS)], rows,
                       [False] * (1 + len(CORRECTIONS))))  # fmt: skip
    add("")
    for note in study.notes:
        add(f"- {note}")
    return "\n".join(out).rstrip() + "\n", headline


def item_id(task: str, item: str) -> str:
    """The id of a benchmark item in an embeddings file: ``<task>/<item>``."""
    return f"{task}/{item}"


def item_embeddings_by_task(table: ScoresTable, by_id: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per task, the embedding of each item (n, d) in table order, from vectors by :func:`item_id`; a task with an
    item that has no vector is left out."""
    out = {}
    for task in table:
        ids = [item_id(task.name, str(i)) for i in task.items]
        if all(i in by_id for i in ids):
            out[task.name] = np.stack([by_id[i] for i in ids])
    return out


# ------------------------------------------------------------------------------------------------ how many items BC needs

BC_SAMPLE_SIZES = (10, 20, 50, 100, 200)


def bc_sample_curve(
    table: ScoresTable, content_free: ScoresTable | None, sizes: Sequence[int] = BC_SAMPLE_SIZES, draws: int = 10,
    seed: int = 0,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """How many of a project's items batch calibration needs: per LLM, the mean accuracy over the balanced binary
    tasks of the corrected answer (the argmax of the corrected logits, on every item of the task) when BC is fitted
    on ``m`` random items (``draws`` draws each), on all items (``all``), and with CC and no correction instead."""
    curve: dict[str, dict[str, list[float]]] = {}
    tasks = [t for t in table if is_binary(t.classes)]
    for task in tasks:
        rng = np.random.default_rng([seed, zlib.crc32(task.name.encode("utf-8"))])
        for k, llm in enumerate(task.llms):
            row = curve.setdefault(llm, {})
            logits, labels = task.logits[k], task.labels
            cf = _content_free(content_free, task.name, llm, task.classes)

            def accuracy(
                correction: BiasCorrection | None, logits: np.ndarray = logits, labels: np.ndarray = labels
            ) -> float:
                corrected_logits = logits if correction is None else correction.transform(logits)
                return float((corrected_logits.argmax(axis=1) == labels).mean())

            row.setdefault("none", []).append(accuracy(None))
            if cf is not None:
                row.setdefault("CC", []).append(accuracy(fit_correction("CC", None, cf)))
            row.setdefault("all", []).append(accuracy(fit_correction("BC", logits, None)))
            for m in sizes:
                if m > labels.size:
                    continue
                values = [accuracy(fit_correction("BC", logits[rng.choice(labels.size, m, replace=False)], None))
                          for _ in range(draws)]  # fmt: skip
                row.setdefault(str(m), []).append(float(np.mean(values)))
    return {llm: {key: float(np.mean(v)) for key, v in row.items()} for llm, row in curve.items()}


def bc_min_items(
    curve: Mapping[str, Mapping[str, float]], sizes: Sequence[int] = BC_SAMPLE_SIZES
) -> int | None:
    """The smallest sample at which BC on that many items is, on the mean over LLMs, at least as accurate as CC
    (what stands in before it); None when no size is (or there are no CC scores)."""
    if not curve or any("CC" not in row for row in curve.values()):
        return None
    cc = float(np.mean([row["CC"] for row in curve.values()]))
    for m in sizes:
        values = [row[str(m)] for row in curve.values() if str(m) in row]
        if values and float(np.mean(values)) >= cc:
            return m
    return None


def bc_curve_markdown(
    curve: Mapping[str, Mapping[str, float]], sizes: Sequence[int] = BC_SAMPLE_SIZES
) -> str:
    from ls_backend.markdown import fmt, markdown_table

    keys = ["none", "CC", *(str(m) for m in sizes), "all"]
    rows = [[f"`{llm}`", *(fmt(row.get(k, float("nan")), 3) for k in keys)] for llm, row in curve.items()]
    means = [fmt(float(np.mean([row[k] for row in curve.values() if k in row])) if any(k in r for r in curve.values())
                 else float("nan"), 3) for k in keys]  # fmt: skip
    rows.append(["mean", *means])
    header = ["LLM", "no correction", "CC", *(f"BC on {m}" for m in sizes), "BC on all"]
    return markdown_table(header, rows)


def _student_methods(study: AnswerStudy) -> tuple[str, str, str] | None:
    """The cascade with the student, the LLM cascade of the same recipe, and that recipe's name; None when the
    study has no student."""
    methods = sorted({m for _, m, _ in study.results if m.startswith(f"{WITH_STUDENT}:")})
    if not methods:
        return None
    recipe = methods[0].split(":", 1)[1]
    return methods[0], f"{CASCADE}:{recipe}", recipe


def student_markdown(
    study: AnswerStudy, llms: Sequence[str], settings: StudySettings, figures: Mapping[str, str] | None = None
) -> tuple[str, dict[str, float]]:
    """The student alone, the LLM cascade and the cascade with the student, per label count (balanced binary,
    natural-ratio and multi-class tasks), with paired tests over the balanced binary tasks, what the cascade with
    the student reaches within half of the LLM cascade's cost, and the ``figures`` (caption -> link); and headline
    numbers."""
    from ls_backend.markdown import fmt, markdown_table, pval

    named = _student_methods(study)
    if named is None:
        return "", {}
    together, cascade, recipe = named
    balanced, natural, multi = (view_names(study, f) for f in ("balanced", "natural", "multiclass"))
    rows, tests = [], []
    headline: dict[str, float] = {}
    for n in (c for c in settings.label_counts if c > 0):
        for label, method in (
            ("student alone", STUDENT),
            ("LLM cascade", cascade),
            ("cascade with the student", together),
        ):
            if not any((v, method, n) in study.results for v in balanced):
                continue
            cost = cost_ratio(study, balanced, method, n, llms) if method != STUDENT else float("nan")
            rows.append([str(n), label, fmt(study.mean(balanced, method, n, "accuracy"), 3),
                         fmt(study.mean(balanced, method, n, "f1"), 3), fmt(study.mean(natural, method, n, "accuracy"), 3),
                         fmt(study.mean(natural, method, n, "f1"), 3), fmt(study.mean(multi, method, n, "accuracy"), 3),
                         fmt(cost, 2),
                         fmt(study.mean(balanced, method, n, "deeper_share"), 3) if method == together else
                         ("1.000" if method == cascade else "0.000")])  # fmt: skip
        for other, what in ((STUDENT, "the student alone"), (cascade, "the LLM cascade")):
            if all((v, together, n) in study.results and (v, other, n) in study.results for v in balanced):
                test = paired(study, balanced, together, other, n)
                tests.append([str(n), what, fmt(study.mean(balanced, together, n, "accuracy"), 3),
                              fmt(study.mean(balanced, other, n, "accuracy"), 3), f"{test.mean_difference:+.3f}",
                              pval(test.p_value), str(test.n_pairs)])  # fmt: skip
                headline[f"{'student' if other == STUDENT else 'cascade'}_p_{n}"] = test.p_value
        headline[f"with_student_accuracy_{n}"] = study.mean(balanced, together, n, "accuracy")
        headline[f"student_accuracy_{n}"] = study.mean(balanced, STUDENT, n, "accuracy")
        headline[f"llm_cascade_accuracy_{n}"] = study.mean(balanced, cascade, n, "accuracy")
        headline[f"with_student_llm_share_{n}"] = study.mean(balanced, together, n, "deeper_share")
    out = [
        "### The student: a classifier on the project's own labels as the cascade's first member",
        "",
        f"Logistic regression on all-MiniLM-L6-v2 embeddings (`ls_backend.student`), fitted on the same draws as the "
        f"LLM cascade (recipe `{recipe}`), its temperature and the policy trained on its out-of-fold logits; its cost "
        "is embedding the text (`costs.json`, `student`). `asks an LLM` = share of items the cascade sent past the "
        "student.",
        "",
        markdown_table(
            [
                "labels",
                "method",
                "balanced acc.",
                "F1 (yes)",
                "natural acc.",
                "natural F1 (yes)",
                "multi-class acc.",
                "cost",
                "asks an LLM",
            ],
            rows,
            [True, False] + [True] * 7,
        ),
        "",
        "Paired two-sided Wilcoxon tests over the balanced binary tasks (accuracy):",
        "",
        markdown_table(
            ["labels", "cascade with the student vs", "with student", "other", "difference", "p", "pairs"],
            tests,
            [True, False, True, True, True, True, True],
        ),
    ]
    frontier = student_frontier(study, llms)
    if frontier is not None and frontier.half is not None:
        half = frontier.half
        cascade_cost, cascade_f1, cascade_accuracy = frontier.points["LLM cascade (served)"]
        headline |= {"half_cost_f1": float(half.f1[0]), "half_cost_accuracy": float(half.accuracy[0]),
                     "half_cost_relative_cost": float(half.relative_cost[0])}  # fmt: skip
        out += [
            "",
            f"With {frontier.labels} labels, within half of the LLM cascade's cost ({fmt(cascade_cost, 2)} of asking "
            f"all {len(llms)} LLMs: a budget of {fmt(float(half.budgets[0]), 3)} on each draw's fit items), the "
            "frontier of the cascade with the student (each task and draw's most accurate policy within the budget) "
            f"reaches a mean F1 (yes) of {fmt(float(half.f1[0]), 3)} and an accuracy of "
            f"{fmt(float(half.accuracy[0]), 3)} on the held-out items at a cost of {fmt(float(half.relative_cost[0]), 2)}, "
            f"against the LLM cascade's {fmt(cascade_f1, 3)} and {fmt(cascade_accuracy, 3)} at {fmt(cascade_cost, 2)} "
            "(balanced binary tasks).",
        ]
        served = frontier.points.get("cascade with the student (served)")
        if served is not None and served[2] > float(half.accuracy[0]):
            out[-1] += (
                f" The served cascade with the student does better than its frontier: accuracy {fmt(served[2], 3)} "
                f"at a cost of {fmt(served[0], 2)}. Its policy is trained bottom-up with a cost weight (Algorithm 1), "
                f"while each frontier policy is the most accurate on only {frontier.labels} fit items, and fits their "
                "noise."
            )
    for caption, link in (figures or {}).items():
        out += ["", f"**{caption}**", "", f"![{caption}]({link})"]
    return "\n".join(out).rstrip() + "\n", headline


@dataclass(frozen=True)
class LearningCurve:
    """Against the label counts: each method's accuracy over the balanced binary tasks (rows: the mean, the 25th and
    the 75th percentile of the tasks' means over draws) and the LLM calls per item of the two cascades."""

    labels: np.ndarray
    accuracy: dict[str, np.ndarray]
    llm_calls: dict[str, np.ndarray]


def learning_curve(study: AnswerStudy) -> LearningCurve | None:
    """The student alone, the LLM cascade and the cascade with the student at every label count where all three
    were measured; the LLM calls per item are the LLM cascade's depth and the cascade with the student's depth less
    its student (asked about every item). None when the study has no student."""
    named = _student_methods(study)
    if named is None:
        return None
    together, cascade, _ = named
    balanced = view_names(study, "balanced")
    methods = {"student alone": STUDENT, "LLM cascade": cascade, "cascade with the student": together}

    def measured(method: str, n: int) -> np.ndarray:
        return np.array(
            [study.results[v, method, n]["accuracy"] for v in balanced if (v, method, n) in study.results]
        )

    counts = [n for n in sorted({n for _, m, n in study.results if m == together})
              if all(measured(m, n).size for m in methods.values())]  # fmt: skip
    if not counts:
        return None
    accuracy = {
        label: np.array([[values.mean(), *np.percentile(values, [25, 75])]
                         for values in (measured(m, n) for n in counts)]).T
        for label, m in methods.items()
    }  # fmt: skip
    depth = {m: np.array([study.mean(balanced, m, n, "depth") for n in counts]) for m in (cascade, together)}
    return LearningCurve(
        labels=np.array(counts),
        accuracy=accuracy,
        llm_calls={"LLM cascade": depth[cascade], "cascade with the student": depth[together] - 1.0},
    )


@dataclass(frozen=True)
class StudentFrontier:
    """At ``labels`` labels on the balanced binary tasks: the frontiers (budget picks) of the LLM cascade and of the
    cascade with the student, the points ``label -> (relative cost, F1, accuracy)`` of the student alone, each LLM
    alone and the served configurations (the study's table values), and ``half``: the cascade with the student's
    picks within half of the served LLM cascade's relative cost (one budget; None without that cost)."""

    labels: int
    curves: dict[str, FrontierCurve]
    points: dict[str, tuple[float, float, float]]
    half: FrontierCurve | None


def student_frontier(
    study: AnswerStudy, llms: Sequence[str], budgets: np.ndarray = FRONTIER_BUDGETS
) -> StudentFrontier | None:
    """The frontier figure's data (see :class:`StudentFrontier`); None when either frontier is missing."""
    named = _student_methods(study)
    if named is None:
        return None
    together, cascade, recipe = named
    n = FRONTIER_LABELS
    by_method = {
        method: {v: study.frontiers[v, method] for v in view_names(study, "balanced") if (v, method) in study.frontiers}
        for method in (cascade, together)
    }  # fmt: skip
    if not all(by_method.values()):
        return None
    curves = {
        "LLM cascade frontier": frontier_picks(by_method[cascade], budgets),
        "cascade with the student frontier": frontier_picks(by_method[together], budgets),
    }
    balanced = view_names(study, "balanced")
    every = sum(study.mean(balanced, f"{llm}:{recipe}", n, "cost") for llm in llms)
    points = {}
    for label, method in (("student alone", STUDENT), *((f"{llm} alone", f"{llm}:{recipe}") for llm in llms),
                          ("LLM cascade (served)", cascade), ("cascade with the student (served)", together)):  # fmt: skip
        if any((v, method, n) in study.results for v in balanced):
            points[label] = (study.mean(balanced, method, n, "cost") / every, study.mean(balanced, method, n, "f1"),
                             study.mean(balanced, method, n, "accuracy"))  # fmt: skip
    served_cost = points.get("LLM cascade (served)", (float("nan"),))[0]
    half = (
        frontier_picks(by_method[together], np.array([0.5 * served_cost]))
        if np.isfinite(served_cost)
        else None
    )
    return StudentFrontier(n, curves, points, half)
