"""The prompt study: which prompt each packaged LLM is asked with, chosen on the benchmark as a whole.

Small LLMs swing by tens of points of accuracy on wording alone, so each LLM's default prompt is measured, not
picked by taste. Every variant of a small, principled grid is scored on a fixed subsample of every benchmark task
(:func:`study_items`: the first ``per_task`` items of each task in the items file, half "yes" and half "no" on
binary tasks), and the LLM's default is the variant with the best **mean over all tasks** of the per-task ranking
quality (:func:`task_quality`: the ROC AUC of the yes-minus-no logit margin on binary tasks, the mean one-vs-rest
AUC of the class probabilities on multi-class tasks), ties broken by mean accuracy. Never per task.

Why ranking quality and not accuracy: where the answer threshold sits is set afterwards, by the label-free bias
correction and the calibrators (:mod:`ls_backend.calibration`), while how well the logits order the items is what
no later stage can add. Accuracy, macro-F1, the share of "yes" and seconds per item are reported beside it.

The grids (:func:`variants_for`):

- **Instruct (chat) models**: four two-level factors, the system instruction (none, so the chat template's own
  default, or a system message), whether the instruction names the classes, the question before or after the
  text, and an ``Answer:`` cue at the end of the user turn. The 8 runs are the half fraction 2^(4-1) with
  generator cue = system x classes x position (resolution IV: no main effect is aliased with a two-factor
  interaction); it contains the previous default. When the best combination of the main effects is not among
  the 8, it is run too (:func:`confirmation_variant`).
- **Base models** (plain text, few-shot): 0, 1 or 2 examples per class x three formats: every example with the
  question before its text, every example with the question after its text, or compact (the question and the
  classes once at the top, then ``Text: ... Answer: <class>`` lines).

Pure Python over numpy apart from :func:`run_prompt_study`, which loads the LLMs and scores through the score
cache (so a rerun asks nothing, and the variant chosen has its subsample already in the benchmark's cache).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ls_backend.confidence import softmax
from ls_backend.metrics import roc_auc

SYSTEM_LEAD = "You are a text classifier."
NAMED_INSTRUCTION = "Answer with one of: {classes}."
UNNAMED_INSTRUCTION = "Answer with one word."
QUESTION = "{question}"
TEXT = "Text: {text}"
CUE = "Answer:"

INSTRUCT_FACTORS = ("system", "classes", "position", "cue")
FORMER_DEFAULTS = {
    "smollm2-135m-instruct": "chat-S0C1P0A1",
    "gemma3-270m": "plain-1shot-q-before",
    "qwen2.5-coder-0.5b-instruct": "chat-S0C1P0A1",
}
"""The packaged defaults before the study (the grid holds each of them), shown beside the chosen ones."""
BASE_FACTORS = ("shots", "format")


@dataclass(frozen=True)
class PromptVariant:
    """One prompt of the study: the overrides an LLM config takes (``prompt``, ``few_shot``) and its levels."""

    name: str
    factors: Mapping[str, str]
    prompt: Mapping[str, Any]
    few_shot: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "factors": dict(self.factors),
            "prompt": dict(self.prompt),
            "few_shot": self.few_shot,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PromptVariant:
        return cls(d["name"], dict(d["factors"]), dict(d["prompt"]), int(d.get("few_shot", 0)))


def instruct_prompt(system: bool, named: bool, after: bool, cue: bool) -> dict[str, Any]:
    """The chat prompt of one cell of the instruct grid (levels as booleans; see the module docstring)."""
    instruction = NAMED_INSTRUCTION if named else UNNAMED_INSTRUCTION
    parts = [TEXT, QUESTION] if after else [QUESTION, TEXT]
    if not system:
        parts.append(instruction)
    template = "\n\n".join(parts) + (f"\n{CUE}" if cue else "")
    return {
        "chat": True,
        "system": f"{SYSTEM_LEAD} {instruction}" if system else None,
        "template": template,
    }


def _instruct_variant(levels: Mapping[str, bool]) -> PromptVariant:
    factors = {
        "system": "message" if levels["system"] else "none",
        "classes": "named" if levels["classes"] else "not named",
        "position": "after text" if levels["position"] else "before text",
        "cue": "Answer:" if levels["cue"] else "none",
    }
    code = "".join(f"{letter}{int(levels[f])}" for letter, f in zip("SCPA", INSTRUCT_FACTORS, strict=True))
    prompt = instruct_prompt(levels["system"], levels["classes"], levels["position"], levels["cue"])
    return PromptVariant(f"chat-{code}", factors, prompt, few_shot=0)


def instruct_variants() -> list[PromptVariant]:
    """The 2^(4-1) half fraction (cue = system x classes x position in +-1 coding), 8 chat prompts."""
    variants = []
    for system, named, after in itertools.product((False, True), repeat=3):
        signs = [1 if level else -1 for level in (system, named, after)]
        cue = signs[0] * signs[1] * signs[2] == 1
        variants.append(
            _instruct_variant({"system": system, "classes": named, "position": after, "cue": cue})
        )
    return variants


BASE_FORMATS = ("question before", "question after", "compact")


def base_prompt(fmt: str) -> dict[str, Any]:
    """The plain prompt of one base-model format (the examples are the task's, rendered with the template)."""
    instruction = NAMED_INSTRUCTION
    if fmt == "question before":
        template = "\n\n".join([QUESTION, TEXT, instruction]) + f"\n{CUE}"
        return {"chat": False, "system": None, "template": template}
    if fmt == "question after":
        template = "\n\n".join([TEXT, QUESTION, instruction]) + f"\n{CUE}"
        return {"chat": False, "system": None, "template": template}
    if fmt == "compact":
        return {"chat": False, "system": f"{QUESTION}\n{instruction}", "template": f"{TEXT}\n{CUE}"}
    raise ValueError(f"unknown base prompt format {fmt!r}; expected one of {list(BASE_FORMATS)}")


def base_variants(max_shots: int = 2) -> list[PromptVariant]:
    """0..``max_shots`` examples per class x the three formats: 3 * (max_shots + 1) plain prompts."""
    variants = []
    for shots in range(max_shots + 1):
        for fmt in BASE_FORMATS:
            slug = fmt.replace("question ", "q-")
            variants.append(
                PromptVariant(
                    f"plain-{shots}shot-{slug}",
                    {"shots": str(shots), "format": fmt},
                    base_prompt(fmt),
                    few_shot=shots,
                )
            )
    return variants


def variants_for(chat: bool) -> list[PromptVariant]:
    """The grid of an LLM: the instruct grid for chat models, the few-shot grid for base models."""
    return instruct_variants() if chat else base_variants()


def confirmation_variant(
    mean_quality: Mapping[str, float], variants: Sequence[PromptVariant]
) -> PromptVariant | None:
    """The instruct cell that the fraction's main effects predict best, if it was not among ``variants``.

    A factor's main effect is the mean quality of the runs at its second level minus that at its first (the
    fraction is balanced, so each level has half of the runs); the predicted best cell takes each factor's
    better level. None when that cell was run, or for grids other than the instruct one.
    """
    runs = [v for v in variants if v.name in mean_quality and set(v.factors) == set(INSTRUCT_FACTORS)]
    if not runs:
        return None
    first = {"system": "none", "classes": "not named", "position": "before text", "cue": "none"}
    best: dict[str, bool] = {}
    for factor in INSTRUCT_FACTORS:
        low = [mean_quality[v.name] for v in runs if v.factors[factor] == first[factor]]
        high = [mean_quality[v.name] for v in runs if v.factors[factor] != first[factor]]
        if not low or not high:
            return None
        best[factor] = float(np.mean(high)) > float(np.mean(low))
    candidate = _instruct_variant(best)
    return None if any(v.name == candidate.name for v in variants) else candidate


# ---------------------------------------------------------------------------------------------------- metrics


def task_quality(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> float:
    """Ranking quality of one task: AUC of the yes-minus-no margin (binary yes/no), else the mean over classes of
    the one-vs-rest AUC of the class probabilities (classes absent from the labels are skipped)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if tuple(classes) in (("yes", "no"), ("no", "yes")):
        yes = list(classes).index("yes")
        return roc_auc(logits[:, yes] - logits[:, 1 - yes], labels == yes)
    probs = softmax(logits)
    aucs = [
        roc_auc(probs[:, c], labels == c)
        for c in range(len(classes))
        if 0 < (labels == c).sum() < labels.size
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def macro_f1(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> float:
    """Macro-averaged F1 over the classes present in the labels or the predictions."""
    from ls_backend.ensemble.classification import precision_recall_f1

    return float(precision_recall_f1(labels, predictions, n_classes)["f1"])


def task_metrics(
    logits: np.ndarray, answers: np.ndarray, labels: np.ndarray, costs: np.ndarray, classes: Sequence[str]
) -> dict[str, float]:
    """Accuracy, quality (:func:`task_quality`), macro-F1, share of "yes" (binary) and seconds per item."""
    labels = np.asarray(labels, dtype=np.int64)
    answers = np.asarray(answers, dtype=np.int64)
    metrics = {
        "accuracy": float((answers == labels).mean()),
        "quality": task_quality(logits, labels, classes),
        "macro_f1": macro_f1(labels, answers, len(classes)),
        "seconds_per_item": float(np.mean(costs)),
        "n_items": int(labels.size),
    }
    if "yes" in classes:
        yes = list(classes).index("yes")
        metrics["yes_share"] = float((answers == yes).mean())
        metrics["true_yes_share"] = float((labels == yes).mean())
    return metrics


def summarize_variant(per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Means over tasks: quality and accuracy over all tasks, AUC / yes share over the binary ones, macro-F1 over
    the multi-class ones, seconds per item over all."""
    rows = list(per_task.values())
    binary = [r for r in rows if "yes_share" in r]
    multi = [r for r in rows if "yes_share" not in r]

    def mean(values: Sequence[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {
        "quality": mean([r["quality"] for r in rows]),
        "accuracy": mean([r["accuracy"] for r in rows]),
        "binary_auc": mean([r["quality"] for r in binary]),
        "binary_accuracy": mean([r["accuracy"] for r in binary]),
        "yes_share": mean([r["yes_share"] for r in binary]),
        "multiclass_macro_f1": mean([r["macro_f1"] for r in multi]),
        "seconds_per_item": mean([r["seconds_per_item"] for r in rows]),
    }


def choose_variant(summaries: Mapping[str, Mapping[str, float]]) -> str:
    """The variant with the best mean quality over all tasks; ties by mean accuracy, then by name."""
    if not summaries:
        raise ValueError("choose_variant: no variant was scored")
    return min(summaries, key=lambda name: (-summaries[name]["quality"], -summaries[name]["accuracy"], name))


# ------------------------------------------------------------------------------------------------ the items


@dataclass
class StudyTask:
    """One task's subsample: texts, label indices and item ids."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def study_items(
    items: Mapping[str, tuple[Sequence[str], Sequence[str], Sequence[str | None]]],
    classes: Mapping[str, Sequence[str]],
    per_task: int,
) -> dict[str, StudyTask]:
    """The fixed subsample: per task, the first ``per_task`` labeled items in file order, half of them "yes" and
    half "no" on yes/no tasks (the items file is a seeded permutation, so these are a seeded random draw).

    ``items`` maps a task to (ids, texts, labels) in file order; ``classes`` maps it to its class names.
    """
    if per_task < 2:
        raise ValueError(f"per_task must be >= 2, got {per_task}")
    out: dict[str, StudyTask] = {}
    for task, (ids, texts, labels) in items.items():
        names = list(classes[task])
        quota: dict[str, int] | None = None
        if set(names) == {"yes", "no"}:
            quota = {"yes": per_task // 2, "no": per_task - per_task // 2}
        chosen = StudyTask()
        for item_id, text, label in zip(ids, texts, labels, strict=True):
            if label is None or label not in names:
                continue
            if quota is not None:
                if quota[label] == 0:
                    continue
                quota[label] -= 1
            chosen.ids.append(str(item_id))
            chosen.texts.append(text)
            chosen.labels.append(names.index(label))
            if len(chosen.ids) == per_task:
                break
        out[task] = chosen
    return out


# ------------------------------------------------------------------------------------------------ the run

ScoreTexts = Callable[[PromptVariant, str, Sequence[str]], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""``score(variant, task, texts) -> (answers (n,), class logits (n, C), seconds (n,))``."""


def study_llm(
    variants: Sequence[PromptVariant],
    tasks: Mapping[str, Sequence[str]],
    items: Mapping[str, StudyTask],
    score: ScoreTexts,
    progress: Callable[[str], None] | None = None,
    confirm: bool = True,
) -> dict[str, Any]:
    """Score every variant on every task's subsample; per variant the per-task metrics and their means, the
    confirmation run when the instruct grid's main effects point outside it, and the chosen variant.

    ``tasks`` maps a task name to its classes; ``score`` asks the LLM (see :data:`ScoreTexts`).
    """
    results: dict[str, Any] = {"variants": [], "per_task": {}, "summary": {}}

    def run(variant: PromptVariant) -> None:
        per_task = {}
        for task, classes in tasks.items():
            chosen = items[task]
            if not chosen.texts:
                continue
            started = time.perf_counter()
            answers, logits, seconds = score(variant, task, chosen.texts)
            per_task[task] = task_metrics(logits, answers, np.array(chosen.labels), seconds, classes)
            if progress is not None:
                progress(
                    f"{variant.name} {task}: quality {per_task[task]['quality']:.3f}, accuracy "
                    f"{per_task[task]['accuracy']:.3f} ({time.perf_counter() - started:.0f} s)"
                )
        results["variants"].append(variant.to_dict())
        results["per_task"][variant.name] = per_task
        results["summary"][variant.name] = summarize_variant(per_task)

    for variant in variants:
        run(variant)
    if confirm:
        extra = confirmation_variant({name: s["quality"] for name, s in results["summary"].items()}, variants)
        results["confirmation"] = extra.name if extra is not None else None
        if extra is not None:
            run(extra)
    results["chosen"] = choose_variant(results["summary"])
    return results


def variant_config(entry: Mapping[str, Any], variant: PromptVariant) -> Any:
    """The LLM config entry with the variant's prompt and few-shot count (an ``LLMConfig``)."""
    from ls_backend.llms.config import LLMConfig

    return LLMConfig.from_dict({**entry, "prompt": dict(variant.prompt), "few_shot": variant.few_shot})


def run_prompt_study(
    llms_path: str,
    tasks_path: str,
    items_path: str,
    cache_path: str,
    per_task: int = 60,
    llm_names: Sequence[str] | None = None,
    batch_size: int = 16,
    on_llm_done: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score the grid of every LLM of a config on the study's subsample, through the score cache.

    Returns the study (settings, per LLM the variants, per-task metrics, means and the chosen variant) and the
    scores rows (:mod:`ls_backend.scores` format, ``llm`` = ``"<llm>:<variant>"``). ``on_llm_done`` is called with
    both after each LLM, so that a long run leaves its finished part on disk.
    """
    import yaml

    from ls_backend.llms.cache import ScoreCache
    from ls_backend.llms.scoring import score_items
    from ls_backend.tasks import load_tasks, read_items

    tasks = load_tasks(tasks_path)
    items_file = read_items(items_path, tasks)
    with open(llms_path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)["llms"]
    entries = [e for e in raw if llm_names is None or e["name"] in llm_names]
    by_task = {name: (t.ids, t.texts, t.labels) for name, t in items_file.tasks.items()}
    classes = {name: tasks[name].classes for name in by_task}
    subsample = study_items(by_task, classes, per_task)
    study: dict[str, Any] = {
        "settings": {
            "per_task": per_task,
            "tasks": list(by_task),
            "selection": "best mean over all tasks of task_quality (binary: AUC of the yes-no margin; "
            "multi-class: mean one-vs-rest AUC); ties by mean accuracy",
            "items": {task: s.ids for task, s in subsample.items()},
        },
        "llms": {},
    }
    rows: list[dict[str, Any]] = []
    with ScoreCache(cache_path) as cache:
        for entry in entries:
            base = variant_config(entry, PromptVariant("base", {}, {}, 0))
            chat = bool(base.prompt.get("chat", False))
            started = time.perf_counter()
            llm = base.build()
            load_seconds = time.perf_counter() - started

            def score(
                variant: PromptVariant,
                task: str,
                texts: Sequence[str],
                entry: Mapping[str, Any] = entry,
                llm: Any = llm,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                prompt = variant_config(entry, variant).prompt_for(tasks[task])
                label = f"{entry['name']} {variant.name} {task}" if progress else False
                batch = score_items(
                    llm, prompt, list(texts), cache=cache, batch_size=batch_size, progress=label
                )
                chosen = subsample[task]
                for i, item_id in enumerate(chosen.ids):
                    rows.append(
                        {
                            "task": task,
                            "item": item_id,
                            "llm": f"{entry['name']}:{variant.name}",
                            "classes": list(classes[task]),
                            "label": classes[task][chosen.labels[i]],
                            "answer": classes[task][int(batch.answers[i])],
                            "logits": [float(x) for x in batch.logits[i]],
                            "cost": float(batch.costs[i]),
                        }
                    )
                return batch.answers, batch.logits, batch.costs

            started = time.perf_counter()
            result = study_llm(
                variants_for(chat), classes, subsample, score, progress=print if progress else None
            )
            result["chat"] = chat
            result["load_seconds"] = load_seconds
            result["wall_seconds"] = time.perf_counter() - started
            study["llms"][entry["name"]] = result
            del llm
            if on_llm_done is not None:
                on_llm_done(study, rows)
    return study, rows


# ------------------------------------------------------------------------------------------------ the report


def study_markdown(study: Mapping[str, Any], previous: Mapping[str, str] | None = None) -> str:
    """The prompt study as markdown: per LLM, every variant's means over tasks (the chosen one in bold), the
    instruct grid's main effects, and per task the chosen variant against ``previous`` (the former default)."""
    from ls_backend.markdown import fmt, markdown_table

    settings = study["settings"]
    out = [
        f"Every variant scored the same {settings['per_task']} items of each of the {len(settings['tasks'])} tasks "
        "(half yes, half no on binary tasks; `ls_backend.benchmark.prompt_study.study_items`). Quality = the ROC "
        "AUC of the yes-minus-no logit margin on binary tasks and the mean one-vs-rest AUC on multi-class tasks; "
        "each LLM's default is the variant with the best mean quality over all tasks (ties by mean accuracy), "
        "never chosen per task. Accuracy is that of the LLM's own answer (no correction, no calibration). "
        f"Command: `{study.get('command', 'python scripts/prompt_study.py')}`.",
        "",
    ]
    for llm, result in study["llms"].items():
        chosen = result["chosen"]
        present = set(result["variants"][0]["factors"]) if result["variants"] else set()
        factors = [f for f in (*INSTRUCT_FACTORS, *BASE_FACTORS) if f in present]
        rows = []
        for variant in result["variants"]:
            name = variant["name"]
            s = result["summary"][name]
            bold = name == chosen
            rows.append([
                f"**{name}**" if bold else name, *(variant["factors"][f] for f in factors), f"**{fmt(s['quality'], 3)}**" if bold else fmt(s["quality"], 3),
                fmt(s["binary_auc"], 3), fmt(s["binary_accuracy"], 3), fmt(s["yes_share"], 3),
                fmt(s["multiclass_macro_f1"], 3), fmt(s["seconds_per_item"], 3),
            ])  # fmt: skip
        out += [f"### `{llm}`", ""]
        header = [
            "variant",
            *factors,
            "quality",
            "binary AUC",
            "binary acc.",
            "yes share",
            "multi-class F1",
            "s / item",
        ]
        right = [False] * (1 + len(factors)) + [True] * 6
        out += [markdown_table(header, rows, right), ""]
        confirmation = result.get("confirmation")
        if set(factors) == set(INSTRUCT_FACTORS):
            effects = main_effects(
                {n: s["quality"] for n, s in result["summary"].items()}, result["variants"]
            )
            out.append(
                "Main effects on mean quality (second level minus first, over the 8 runs of the fraction): "
                + ", ".join(f"{f} {e:+.3f}" for f, e in effects.items())
                + "."
                + (
                    f" The cell they predict best was run too: `{confirmation}`."
                    if confirmation
                    else " The cell they predict best is among the 8 runs."
                )
            )
            out.append("")
        old = (previous or {}).get(llm)
        if old and old in result["per_task"] and old != chosen:
            rows = []
            for task in settings["tasks"]:
                a, b = result["per_task"][old].get(task), result["per_task"][chosen].get(task)
                if a and b:
                    rows.append([task, fmt(a["quality"], 3), fmt(b["quality"], 3), fmt(a["accuracy"], 3),
                                 fmt(b["accuracy"], 3)])  # fmt: skip
            out += [
                f"Per task, the former default `{old}` against the chosen `{chosen}`:",
                "",
                markdown_table(
                    ["task", "quality (former)", "quality (chosen)", "acc. (former)", "acc. (chosen)"], rows
                ),
                "",
            ]
    return "\n".join(out).rstrip() + "\n"


def main_effects(
    mean_quality: Mapping[str, float], variants: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """Per instruct factor: mean quality of the fraction's runs at the second level minus at the first."""
    first = {"system": "none", "classes": "not named", "position": "before text", "cue": "none"}
    runs = [v for v in variants if v["name"] in mean_quality][:8]
    effects = {}
    for factor in INSTRUCT_FACTORS:
        low = [mean_quality[v["name"]] for v in runs if v["factors"][factor] == first[factor]]
        high = [mean_quality[v["name"]] for v in runs if v["factors"][factor] != first[factor]]
        effects[factor] = float(np.mean(high) - np.mean(low)) if low and high else float("nan")
    return effects
