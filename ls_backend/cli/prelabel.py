"""``lwc prelabel``: pre-annotate a whole Label Studio project in the background, with a progress bar.

The running server does the work (it has the LLMs, the score cache and Label Studio's API): this command starts
the project's job (``POST /jobs/prelabel``), or attaches to the one that runs, and follows it (``GET /jobs/<id>``)
with a tqdm bar (tasks done of the project's total, rate, ETA; LLM calls and cached outputs as it goes). Ctrl-C
leaves the job running; ``--cancel`` stops it. Basic auth from ``$BASIC_AUTH_USER``/``$BASIC_AUTH_PASS`` when set.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

FINAL = ("done", "failed", "cancelled")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prelabel",
        help="pre-annotate a whole project in the background (the running server's job), with a progress bar",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--project", required=True, type=int, help="Label Studio's numeric project id")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--missing",
        dest="mode",
        action="store_const",
        const="missing",
        help="tasks without a prediction of the serving version (default)",
    )
    which.add_argument(
        "--all",
        dest="mode",
        action="store_const",
        const="all",
        help="every task, replacing its prediction of the serving version",
    )
    parser.set_defaults(mode="missing")
    parser.add_argument("--server", default="http://127.0.0.1:9090", help="the backend (default %(default)s)")
    parser.add_argument("--cancel", action="store_true", help="cancel the project's active job")
    parser.add_argument("--detach", action="store_true", help="start the job and return without following it")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between progress reads")
    parser.add_argument(
        "--reconnect", type=float, default=600.0,
        help="seconds to wait for a server that stops answering (it resumes its jobs when it starts again)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def request_json(
    server: str, method: str, path: str, body: Any = None, timeout: float = 30
) -> tuple[int, Any]:
    """``(status, JSON reply)`` of one call to the backend (an HTTP error status is returned, not raised)."""
    from ls_backend.cli import CLIError

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.rstrip('/')}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    user, password = os.environ.get("BASIC_AUTH_USER", ""), os.environ.get("BASIC_AUTH_PASS", "")
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as e:
        raw = e.read().decode(errors="replace")
        try:
            return int(e.code), json.loads(raw)
        except ValueError:
            return int(e.code), {"error": raw}
    except (urllib.error.URLError, OSError) as e:
        raise CLIError(f"cannot reach the server at {server}: {getattr(e, 'reason', e)}") from None
    except (http.client.HTTPException, ValueError) as e:
        # a reply cut short (the server was killed while it answered) is a server that does not answer
        raise CLIError(f"the server at {server} broke off its reply: {type(e).__name__}: {e}") from None


def describe(job: dict[str, Any]) -> str:
    """One line about a finished job."""
    line = (
        f"job {job['id']} ({job['kind']}, {job['mode']}) {job['status']}: {job['total']} tasks of project "
        f"{job['project']} with {job['target_version']}: {job['done']} predicted, {job['skipped']} skipped, "
        f"{job['failed']} failed; {job['llm_calls']} LLM calls (cost {job.get('llm_cost', 0.0):.1f}), "
        f"{job['cached']} LLM outputs from the score cache; {job['elapsed_s']:.1f} s"
    )
    if job.get("deleted"):
        line += f"; {job['deleted']} replaced predictions deleted"
    if job.get("error"):
        line += f"; error: {job['error']}"
    return line


def follow(
    server: str, job: dict[str, Any], interval: float = 0.5, file: Any = None, reconnect_s: float = 600.0
) -> dict[str, Any]:
    """Show a job's progress as a tqdm bar until it ends; returns its final state. A server that stops answering
    (restarted, or killed and started again: it resumes its jobs) is waited for up to ``reconnect_s``."""
    from tqdm import tqdm

    from ls_backend.cli import CLIError

    bar = tqdm(
        total=job["total"] or None,
        initial=job["processed"],
        unit="task",
        desc=f"job {job['id']} {job['kind']}",
        file=file or sys.stderr,
        dynamic_ncols=True,
    )
    unreachable_since: float | None = None
    try:
        while True:
            if job["total"] and bar.total != job["total"]:
                bar.total = job["total"]  # the plan is known (or changed: a promotion retargeted the job)
                bar.n = min(bar.n, job["processed"])
            bar.update(max(job["processed"] - bar.n, 0))
            bar.set_postfix_str(
                f"{job['status']}, {job['llm_calls']} LLM calls, {job['cached']} cached"
                + (f", {job['failed']} failed" if job["failed"] else "")
                + (f" | {job['note']}" if job["status"] == "paused" and job.get("note") else ""),
                refresh=True,
            )
            if job["status"] in FINAL:
                return job
            time.sleep(interval)
            try:
                code, reply = request_json(server, "GET", f"/jobs/{job['id']}")
            except CLIError as e:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > reconnect_s:
                    raise CLIError(f"{e}; job {job['id']} resumes when the server starts again") from None
                bar.set_postfix_str(f"the server does not answer; waiting for it ({e})", refresh=True)
                continue
            unreachable_since = None
            if code != 200:
                raise CLIError(f"reading job {job['id']} failed: {code} {reply.get('error')}")
            job = reply["job"]
    finally:
        bar.close()


def run(args: argparse.Namespace) -> int:
    from ls_backend.cli import CLIError

    if args.cancel:
        code, reply = request_json(args.server, "GET", f"/jobs?project={args.project}")
        if code != 200:
            raise CLIError(f"the server refused: {code} {reply.get('error')}")
        active = [j for j in reply["jobs"] if j["status"] not in FINAL]
        if not active:
            print(f"project {args.project} has no active job")
            return 0
        code, reply = request_json(args.server, "POST", f"/jobs/{active[0]['id']}/cancel", {})
        print(f"job {active[0]['id']}: cancel requested ({reply['job']['status']})")
        return 0
    code, reply = request_json(
        args.server, "POST", "/jobs/prelabel", {"project": args.project, "mode": args.mode}
    )
    if code == 409:
        job = reply["job"]
        print(
            f"project {args.project} already has job {job['id']} ({job['kind']}, {job['status']}); following it"
        )
    elif code == 202:
        job = reply["job"]
        print(f"job {job['id']} started: pre-annotating project {args.project} ({args.mode})")
    else:
        raise CLIError(f"the server refused: {code} {reply.get('error')}")
    if args.detach:
        return 0
    try:
        job = follow(args.server, job, args.interval, reconnect_s=args.reconnect)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; job {job['id']} goes on (lwc prelabel --project {args.project} --cancel)"
        )
        return 130
    print(describe(job))
    return 0 if job["status"] == "done" else 1
