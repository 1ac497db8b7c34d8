"""Bin-edge tuning in a separate process, so that a retrain's seconds of Optuna never starve the request threads.

Optuna's search is pure Python: run in the server's process (the retrain worker is a thread), it holds the
interpreter lock for most of its seconds, and webhooks waiting for a thread of the same process queue behind it
(docs/learning-loop.md measures both). :func:`tune_in_subprocess` has the signature of
:func:`ls_backend.ensemble.tuning.tune_bin_edges` and the same result for the same inputs and seed: it writes the
arrays to an ``.npz`` file (plain data, never pickle), runs ``python -m ls_backend.loop.tuning`` at the lowest CPU
priority (Linux ``SCHED_IDLE``: it runs only when no other task of the server wants the CPU; elsewhere ``nice``),
and reads the edges back from a JSON file. The child gets one BLAS/OpenMP thread unless the environment says
otherwise.

Even at the idle priority the child slowed a busy server measurably on a 2-core machine (docs/learning-loop.md,
"Webhooks during a retrain"), so with ``pause_while`` (the server passes "a request is being answered") the child
is stopped (SIGSTOP) while that holds and continued once it has not held for ``QUIET_S``. The tuning's time cap
counts the pauses: a retrain during heavy traffic tunes fewer trials, and never delays a request; once the cap has
passed the child is no longer stopped, so it ends even on a server that is never idle. The child asks the kernel
to kill it when the server's thread that started it ends (Linux), and is stopped only once it has: a server
killed while its child was stopped used to leave that child stopped for ever.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ls_backend.files import atomic_write_text

if TYPE_CHECKING:
    import optuna

NICENESS = 10
"""How much lower the tuning process's CPU priority is than the server's (request threads go first)."""
STARTUP_MARGIN_S = 300.0
"""Seconds the child may take beyond the tuning's own time cap (interpreter start, imports) before it is killed."""
POLL_S = 0.01
"""How often the parent looks at ``pause_while`` (a request waits at most about this long for the CPU)."""
QUIET_S = 0.05
"""How long ``pause_while`` must have been false before a paused child continues (no stop/continue flutter)."""
_OPTIONS = ("n_bins", "n_trials", "n_splits", "test_size", "seed", "lam", "positive_class", "n_classes",
            "min_weight", "timeout", "strategies")  # fmt: skip


class TuningProcessError(RuntimeError):
    """The tuning process failed (its exit status and the end of its output say why)."""


@dataclass(frozen=True)
class TunedEdges:
    """What the tuning process found: the best edges per LLM, their objective (mean F1), the number of trials
    run and the process id that ran them."""

    edges: list[np.ndarray]
    best_value: float
    n_trials: int
    pid: int


def tune_in_subprocess(
    answers: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    costs: np.ndarray | None = None,
    niceness: int = NICENESS,
    pause_while: Callable[[], bool] | None = None,
    **options: Any,
) -> TunedEdges:
    """:func:`ls_backend.ensemble.tuning.tune_bin_edges` in a child process (see the module docstring).

    ``options`` are tune_bin_edges's keyword arguments (``n_bins``, ``n_trials``, ``n_splits``, ``seed``, ``lam``,
    ``n_classes``, ``timeout``, ...; strategies by name); a persistent Optuna storage is not supported here.
    ``pause_while``: the child is stopped while it returns True (see the module docstring).
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"tune_in_subprocess: unsupported option(s) {unknown}; it takes {list(_OPTIONS)}")
    strategies = options.get("strategies")
    if strategies is not None and not all(isinstance(s, str) for s in strategies):
        raise TypeError("tune_in_subprocess: strategies must be given by name")
    with tempfile.TemporaryDirectory(prefix="lwc-tuning-") as folder:
        request, reply = Path(folder) / "request.npz", Path(folder) / "reply.json"
        started = (
            Path(folder) / "started"
        )  # the child has tied its life to ours: it may be stopped from now on
        arrays: dict[str, Any] = {"answers": answers, "scores": scores, "labels": labels}
        if costs is not None:
            arrays["costs"] = costs
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        np.savez(request, options=np.array(json.dumps(options, default=_plain)), **arrays)
        command = [
            sys.executable, "-m", __name__, str(request), str(reply), "--nice", str(int(niceness)),
            "--parent", str(os.getpid()), "--started", str(started),
        ]  # fmt: skip
        timeout = options.get("timeout")
        cap = None if timeout is None else float(timeout)
        log = Path(folder) / "child.log"
        with log.open("wb") as output:
            child = subprocess.Popen(command, env=_child_env(), stdout=output, stderr=subprocess.STDOUT)
            returncode = _wait(child, cap, pause_while, started)
        if returncode != 0:
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise TuningProcessError(f"the tuning process exited with {returncode}: {tail}")
        result = json.loads(reply.read_text(encoding="utf-8"))
    _same_package(str(result.get("module")))
    return TunedEdges(
        edges=[np.asarray(e, dtype=np.float64) for e in result["edges"]],
        best_value=float(result["best_value"]),
        n_trials=int(result["n_trials"]),
        pid=int(result["pid"]),
    )


def _wait(
    child: subprocess.Popen[bytes], cap: float | None, pause_while: Callable[[], bool] | None, started: Path
) -> int:
    """Wait for the child, stopping it while ``pause_while()`` holds, but not before it has created ``started``
    (see :func:`die_with_parent`) and not once its time cap ``cap`` has passed since then (it then finishes its
    trial and ends, so a server busy for long still gets its retrain). It is killed when it runs past the cap plus
    :data:`STARTUP_MARGIN_S`, not counting the time it was stopped."""
    begun = time.monotonic()
    paused_total, paused_at, quiet_since = 0.0, None, begun
    started_at: float | None = (
        None  # when the child was first seen to have started (its cap counts from then)
    )
    try:
        while True:
            try:
                return child.wait(POLL_S if pause_while is not None else 1.0)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            running_s = now - begun - paused_total - (now - paused_at if paused_at is not None else 0.0)
            if cap is not None and running_s > cap + STARTUP_MARGIN_S:
                raise TuningProcessError(
                    f"the tuning process ran past {cap + STARTUP_MARGIN_S:.0f} s and was killed"
                )
            if pause_while is None:
                continue
            if started_at is None and started.exists():
                started_at = now
            may_pause = started_at is not None and (cap is None or now - started_at < cap)
            if may_pause and pause_while():
                quiet_since = now
                if paused_at is None:
                    child.send_signal(signal.SIGSTOP)
                    paused_at = now
            elif paused_at is not None and (not may_pause or now - quiet_since >= QUIET_S):
                child.send_signal(signal.SIGCONT)
                paused_total += now - paused_at
                paused_at = None
    finally:
        if child.poll() is None:
            with contextlib.suppress(OSError):
                child.send_signal(signal.SIGCONT)
                child.kill()
            child.wait()


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"tune_in_subprocess: option value {value!r} is not plain data")


def _child_env() -> dict[str, str]:
    """The server's environment (the child imports the package installed for this interpreter) with one BLAS
    thread by default."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    return env


def _same_package(child_module: str) -> None:
    """Refuse a result computed by another copy of this package (an old install beside a checkout, say)."""
    here = str(Path(__file__).resolve())
    if child_module != here:
        raise TuningProcessError(
            f"the tuning process ran {child_module}, not this server's {here}: install the package into the "
            f"environment of {sys.executable} (pip install .), or put it on PYTHONPATH"
        )


def lower_priority(niceness: int) -> str:
    """Make this process yield the CPU to everything else: ``SCHED_IDLE`` where the OS has it (Linux), and
    ``nice`` as well (a nice-10 process still took most of a core from a busy server in the measurements of
    docs/learning-loop.md; an idle-class one does not). Returns what it did."""
    done = []
    if niceness > 0:
        os.nice(niceness)
        done.append(f"nice +{niceness}")
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            done.append("SCHED_IDLE")
        except OSError:  # not allowed here (some containers): nice alone
            pass
    return ", ".join(done) or "unchanged"


def die_with_parent(parent: int) -> bool:
    """Have the kernel kill this process when the thread that started it ends (Linux ``PR_SET_PDEATHSIG``).

    The server stops this process while it answers requests; were the server killed then (kill -9, or a
    SIGTERM that ends it at once), a stopped child would stay stopped for ever, and SIGKILL is the one signal
    a stopped process obeys. Returns False when ``parent`` has already gone (then there is nobody to reply to).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):  # no prctl in this libc: nothing more to do
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    return os.getppid() == parent  # checked after the prctl: a parent that died before it is seen here


def make_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """An Optuna storage for :func:`ls_backend.ensemble.tuning.tune_bin_edges` from a URL: None (in memory),
    ``journal:PATH`` (a journal file) or an RDB URL (``sqlite:///tuning.db``, ``postgresql://...``)."""
    if url is None:
        return None
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal:").removeprefix("//")
        if not path:
            raise ValueError("journal storage needs a path: journal:PATH")
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ValueError(f"storage must be an RDB URL (sqlite:///file.db, ...) or journal:PATH, got {url!r}")
    return optuna.storages.RDBStorage(url)


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO on its own handler; an entry point that tunes (``lwc``, the tuning child,
    the benchmarks) keeps only its warnings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """The child: read the request, tune, write the reply (``python -m ls_backend.loop.tuning IN OUT``)."""
    parser = argparse.ArgumentParser(description="tune cascade bin edges (run by the retrain worker)")
    parser.add_argument("request", type=Path, help="the .npz written by tune_in_subprocess")
    parser.add_argument("reply", type=Path, help="where the JSON result goes")
    parser.add_argument(
        "--nice", type=int, default=NICENESS, help="how much to lower this process's priority"
    )
    parser.add_argument("--parent", type=int, help="the server's process id: this process ends with it")
    parser.add_argument(
        "--started", type=Path, help="a file to create once it does (the server may then stop it)"
    )
    args = parser.parse_args(argv)
    if args.parent is not None and not die_with_parent(args.parent):
        return 1
    if args.started is not None:
        args.started.touch()
    lower_priority(args.nice)
    quiet_optuna()
    from ls_backend.ensemble.tuning import tune_bin_edges

    with np.load(args.request, allow_pickle=False) as data:
        options = json.loads(str(data["options"]))
        costs = data["costs"] if "costs" in data.files else None
        tuned = tune_bin_edges(data["answers"], data["scores"], data["labels"], costs=costs, **options)
    result = {
        "edges": [np.asarray(e, dtype=np.float64).tolist() for e in tuned.edges],
        "best_value": tuned.best_value,
        "n_trials": tuned.n_trials,
        "pid": os.getpid(),
        "module": str(Path(__file__).resolve()),
    }
    atomic_write_text(args.reply, json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
