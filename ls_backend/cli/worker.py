"""``lwc worker``: run pre-annotation jobs from the RQ queue (``loop.job_backend: rq``) on this machine.

The worker reads its own configuration (``--config`` or ``$LWC_CONFIG``: the same LLM names as the server's, which
may point at OpenAI-compatible inference servers), Label Studio from ``$LABEL_STUDIO_URL`` and
``$LABEL_STUDIO_API_KEY``, and keeps its score cache and job state in its own model directory. See
docs/server.md, "Pre-annotating a project". ``kill -USR1 <pid>`` prints the stack of each of its threads.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker", help="run pre-annotation jobs from the RQ queue on Redis (loop.job_backend: rq)"
    )
    parser.add_argument(
        "--redis", required=True, help="the Redis the server enqueues on, e.g. redis://host:6379/0"
    )
    parser.add_argument("--config", default=None, help="this worker's backend YAML (default: $LWC_CONFIG)")
    parser.add_argument("--burst", action="store_true", help="stop once the queue is empty")
    parser.add_argument("--name", default=None, help="the worker's name in RQ (default: RQ's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ls_backend.cli import CLIError
    from ls_backend.labelstudio import LabelStudioAccess
    from ls_backend.server.rq_jobs import run_worker

    if not args.redis.startswith(("redis://", "rediss://", "unix://")):
        raise CLIError(f"--redis must be a redis:// URL, got {args.redis!r}")
    if LabelStudioAccess.from_env() is None:
        raise CLIError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY: the worker creates predictions there")
    if args.config:
        os.environ["LWC_CONFIG"] = args.config
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>` prints every thread's stack: where a stuck worker is
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    run_worker(args.redis, burst=args.burst, name=args.name)
    return 0
