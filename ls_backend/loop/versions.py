"""Model versions of a project: plain JSON files under the model directory, written atomically.

Layout (``<model_dir>/project-<id>/``)::

    versions/v0001-20261128T153012Z.json   one file per version (never rewritten)
    serving.json                           the serving pointer and its history of promotions and rollbacks
    retrain.lock                           held (flock) while a retrain runs, see ls_backend.loop.trainer
    retrain.request                        an admin's request for a retrain (``lwc retrain``), consumed by a worker

A version holds the calibrators, the cascade policy, the held-out evaluation, which labels trained it and when,
and its status: ``initial`` (the out-of-task model before any label), ``promoted`` or ``rejected`` (a candidate
that evaluated worse than the version serving at the time; kept for the record). Names sort by their sequence
number and read as a time: ``v0003-20261128T153012Z``.

A version file is written to a temporary file, fsynced and hard-linked into place (so two writers can never
take the same name), the pointer with ``os.replace``; a reader never sees half a file. A version file that does
not parse or validate is refused with :class:`VersionError` naming the file and the problem, and
:meth:`VersionStore.serving` then serves the previous valid version of the pointer's history.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ls_backend.files import atomic_write_text, fsync_directory, write_temp_beside
from ls_backend.loop.model import ServingModel

logger = logging.getLogger(__name__)

FORMAT = "lwc-model-version"
FORMAT_VERSION = 1
STATUSES = ("initial", "promoted", "rejected")
NAME_PATTERN = re.compile(r"v(\d{4,})-(\d{8}T\d{6}Z)")


class VersionError(ValueError):
    """A version that does not exist, does not parse, or does not validate."""


@dataclass
class ModelVersion:
    """One saved model version (see the module docstring)."""

    name: str
    project: str
    created_at: str
    status: str
    model: ServingModel
    parent: str | None = None
    trigger: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def sequence(self) -> int:
        return sequence_of(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "project": self.project,
            "created_at": self.created_at,
            "status": self.status,
            "parent": self.parent,
            "trigger": self.trigger,
            "model": self.model.to_dict(),
            "metrics": self.metrics,
            "evaluation": self.evaluation,
            "labels": self.labels,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "version") -> ModelVersion:
        """Rebuild and validate a version; :class:`VersionError` says what is wrong."""
        if not isinstance(d, dict):
            raise VersionError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise VersionError(
                f"{where}: not a model version (format {d.get('format')!r}, expected {FORMAT!r})"
            )
        if d.get("format_version") != FORMAT_VERSION:
            raise VersionError(f"{where}: unsupported format_version {d.get('format_version')!r}")
        missing = [k for k in ("name", "project", "created_at", "status", "model") if k not in d]
        if missing:
            raise VersionError(f"{where}: lacks field(s) {missing}")
        if d["status"] not in STATUSES:
            raise VersionError(f"{where}: unknown status {d['status']!r}; expected one of {list(STATUSES)}")
        if not isinstance(d["name"], str) or not NAME_PATTERN.fullmatch(d["name"]):
            raise VersionError(f"{where}: bad version name {d['name']!r}")
        # every field is checked before use: a file of valid JSON with a wrong-typed field must be refused with
        # VersionError (so that the previous version serves), never break a request with another error
        for key in ("created_at", "parent", "trigger"):
            value = d.get(key)
            if not isinstance(value, str) and (key == "created_at" or value is not None):
                raise VersionError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        if isinstance(d["project"], bool) or not isinstance(d["project"], str | int):
            raise VersionError(f"{where}: 'project' must be a string or an integer, got {d['project']!r}")
        sections = {}
        for key in ("metrics", "evaluation", "labels", "config"):
            value = d.get(key)
            if value is not None and not isinstance(value, dict):
                raise VersionError(f"{where}: {key!r} must be an object, got {type(value).__name__}")
            sections[key] = dict(value or {})
        for key in ("watermark", "n_labels"):
            value = sections["labels"].get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise VersionError(f"{where}: 'labels.{key}' must be an integer, got {value!r}")
        if not isinstance(sections["labels"].get("by_source", {}), dict):
            raise VersionError(f"{where}: 'labels.by_source' must be an object")
        oot_version = sections["config"].get("oot_version")
        if oot_version is not None and not isinstance(oot_version, str):
            raise VersionError(f"{where}: 'config.oot_version' must be a string, got {oot_version!r}")
        try:
            model = ServingModel.from_dict(d["model"])
        except Exception as e:  # any shape ServingModel cannot read (None, a list, a wrong-typed table)
            raise VersionError(f"{where}: invalid model: {type(e).__name__}: {e}") from e
        return cls(
            name=d["name"], project=str(d["project"]), created_at=d["created_at"], status=d["status"],
            model=model, parent=d.get("parent"), trigger=d.get("trigger"), metrics=sections["metrics"],
            evaluation=sections["evaluation"], labels=sections["labels"], config=sections["config"],
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """What ``/versions`` and ``lwc versions`` show: no calibrator or policy tables."""
        return {
            "name": self.name,
            "status": self.status,
            "created_at": self.created_at,
            "parent": self.parent,
            "trigger": self.trigger,
            "n_labels": self.labels.get("n_labels", 0),
            "labels_by_source": self.labels.get("by_source", {}),
            "evaluation": {
                key: self.evaluation.get(key)
                for key in ("decision", "reason", "candidate", "serving")
                if key in self.evaluation
            },
            "metrics": {k: v for k, v in self.metrics.items() if not isinstance(v, dict | list)},
        }


def sequence_of(name: str) -> int:
    match = NAME_PATTERN.fullmatch(name)
    if not match:
        raise VersionError(f"bad version name {name!r}; expected like 'v0003-20261128T153012Z'")
    return int(match.group(1))


def utc_now() -> datetime:
    return datetime.now(UTC)


class VersionStore:
    """The versions of one project under ``model_dir`` (see the module docstring)."""

    def __init__(self, model_dir: str | os.PathLike[str], project: int | str) -> None:
        self.project = str(project)
        self.directory = Path(model_dir) / f"project-{self.project}"
        self.versions_dir = self.directory / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.pointer_path = self.directory / "serving.json"
        self.lock_path = self.directory / "retrain.lock"
        self.request_path = self.directory / "retrain.request"
        self._cache: dict[str, tuple[tuple[int, int], ModelVersion]] = {}
        self.last_fallback: str | None = None

    # ---- files

    def path_of(self, name: str) -> Path:
        sequence_of(name)
        return self.versions_dir / f"{name}.json"

    def names(self) -> list[str]:
        """Every version file's name, oldest first (by sequence number); temporary files are skipped."""
        names = [p.stem for p in self.versions_dir.glob("v*.json") if NAME_PATTERN.fullmatch(p.stem)]
        return sorted(names, key=sequence_of)

    def load(self, name: str) -> ModelVersion:
        """A version by name, validated (cached while its file is unchanged); :class:`VersionError` if bad."""
        path = self.path_of(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise VersionError(
                f"version {name!r} of project {self.project} does not exist ({path})"
            ) from None
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VersionError(f"version file {path} is corrupted (not valid JSON: {e})") from None
        version = ModelVersion.from_dict(data, where=f"version file {path}")
        if version.name != name:
            raise VersionError(f"version file {path} holds version {version.name!r}, not {name!r}")
        self._cache[name] = (key, version)
        return version

    def save(
        self,
        model: ServingModel,
        *,
        status: str,
        parent: str | None = None,
        trigger: str | None = None,
        metrics: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        labels: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Write a new version under the next free name (atomic, never overwriting) and return it."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {list(STATUSES)}, got {status!r}")
        now = utc_now()
        for _ in range(100):
            existing = self.names()
            sequence = (sequence_of(existing[-1]) + 1) if existing else 1
            name = f"v{sequence:04d}-{now.strftime('%Y%m%dT%H%M%SZ')}"
            version = ModelVersion(
                name=name, project=self.project, created_at=now.isoformat().replace("+00:00", "Z"), status=status,
                model=model, parent=parent, trigger=trigger, metrics=metrics or {}, evaluation=evaluation or {},
                labels=labels or {}, config=config or {},
            )  # fmt: skip
            text = json.dumps(version.to_dict(), allow_nan=True)
            temp = write_temp_beside(self.path_of(name), text, durable=True)
            try:
                os.link(temp, self.path_of(name))  # fails if the name is taken: no overwrite, no race
            except FileExistsError:
                continue
            finally:
                temp.unlink(missing_ok=True)
            fsync_directory(self.versions_dir)
            return version
        raise VersionError(f"could not find a free version name in {self.versions_dir}")

    # ---- the serving pointer

    def _read_pointer(self) -> dict[str, Any]:
        try:
            data = json.loads(self.pointer_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"serving": None, "history": []}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            logger.error(
                "serving pointer %s is corrupted (%s); rebuilding it from the version files",
                self.pointer_path,
                e,
            )
            return self._pointer_from_files()
        if not isinstance(data, dict) or not isinstance(data.get("history"), list):
            return self._pointer_from_files()
        # entries that are not {"name": <str>, ...} are dropped: the pointer is read, never trusted
        history = [e for e in data["history"] if isinstance(e, dict) and isinstance(e.get("name"), str)]
        serving = data.get("serving") if isinstance(data.get("serving"), str) else None
        return {**data, "serving": serving, "history": history}

    def _pointer_from_files(self) -> dict[str, Any]:
        history = []
        for name in self.names():
            with contextlib.suppress(VersionError):
                if self.load(name).status in ("initial", "promoted"):
                    history.append({"name": name, "action": "recovered"})
        return {"serving": history[-1]["name"] if history else None, "history": history}

    def _write_pointer(self, serving: str, action: str, note: str | None = None) -> None:
        pointer = self._read_pointer()
        entry = {"name": serving, "action": action, "at": utc_now().isoformat().replace("+00:00", "Z")}
        if note:
            entry["note"] = note
        pointer = {"serving": serving, "history": [*pointer["history"], entry]}
        atomic_write_text(self.pointer_path, json.dumps(pointer, indent=1), durable=True)

    def serving_name(self) -> str | None:
        """The name the pointer says serves (not validated; :meth:`serving` validates)."""
        name = self._read_pointer().get("serving")
        return name if isinstance(name, str) else None

    def serving(self) -> ModelVersion:
        """The serving version; if its file is invalid, the latest valid one before it in the pointer's history
        (and ``last_fallback`` says why). :class:`VersionError` when there is no valid version at all."""
        pointer = self._read_pointer()
        candidates = [pointer.get("serving")] + [e.get("name") for e in reversed(pointer["history"])]
        errors: list[str] = []
        seen: set[str] = set()
        for name in candidates:
            if not isinstance(name, str) or name in seen:
                continue
            seen.add(name)
            try:
                version = self.load(name)
            except VersionError as e:
                errors.append(str(e))
                continue
            if errors:
                self.last_fallback = f"serving {name} because: {'; '.join(errors)}"
                logger.error("project %s: %s", self.project, self.last_fallback)
            else:
                self.last_fallback = None
            return version
        detail = f": {'; '.join(errors)}" if errors else ""
        raise VersionError(f"project {self.project} has no valid serving version{detail}")

    def has_serving(self) -> bool:
        try:
            self.serving()
        except VersionError:
            return False
        return True

    def promote(self, name: str, action: str = "promote", note: str | None = None) -> ModelVersion:
        """Make a (valid, not rejected) version serve."""
        version = self.load(name)
        if version.status == "rejected" and action == "promote":
            raise VersionError(f"version {name} was rejected by its evaluation; use rollback to force it")
        self._write_pointer(name, action, note)
        return version

    def rollback(self, name: str | None = None) -> ModelVersion:
        """Serve ``name`` (any valid version), or without a name the version that served before the current one."""
        if name is None:
            pointer = self._read_pointer()
            current = pointer.get("serving")
            previous = [e["name"] for e in pointer["history"] if e.get("name") != current]
            for candidate in reversed(previous):
                try:
                    self.load(candidate)
                except VersionError:
                    continue
                name = candidate
                break
            if name is None:
                raise VersionError(f"project {self.project}: no earlier valid version to roll back to")
        self.load(name)
        self._write_pointer(name, "rollback")
        return self.load(name)

    def history(self) -> list[dict[str, Any]]:
        return list(self._read_pointer()["history"])

    def ensure_initial(self, model: ServingModel, config: dict[str, Any] | None = None) -> ModelVersion:
        """The serving version, creating and promoting the out-of-task ``initial`` one when there is none."""
        with contextlib.suppress(VersionError):
            return self.serving()
        version = self.save(model, status="initial", trigger="initial", config=config,
                            labels={"n_labels": 0, "by_source": {}})  # fmt: skip
        self._write_pointer(version.name, "initial")
        return version

    def list(self) -> list[dict[str, Any]]:
        """Every version's summary, oldest first; an invalid file is listed with its error; ``serving`` marks the
        one that serves."""
        serving = None
        with contextlib.suppress(VersionError):
            serving = self.serving().name
        result = []
        for name in self.names():
            try:
                entry = self.load(name).summary()
            except VersionError as e:
                entry = {"name": name, "status": "invalid", "error": str(e)}
            entry["serving"] = name == serving
            result.append(entry)
        return result

    def latest(self) -> ModelVersion | None:
        """The newest valid version (any status), None when there is none."""
        for name in reversed(self.names()):
            with contextlib.suppress(VersionError):
                return self.load(name)
        return None
