"""``lwc serve``: run the Label Studio ML backend (granian by default; waitress or the Flask dev server on request)."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

HTTP_SERVERS = ("granian", "waitress")
DEFAULT_THREADS = 128
"""Python threads that run requests. A webhook's thread mostly waits for the label store's group commit, and a
commit can only group the webhooks that hold a thread: a burst of 200 was stored 3-5 events per commit with 8
threads, 34-50 with 128, each commit's fixed cost (an fsync with ``synchronous = full``) shared
(docs/learning-loop.md, "Threads for a burst"). An idle thread costs little, and granian ends it after 30 s; calls
to one LLM are serialized by its lock whatever the number of threads."""
STOP_TIMEOUT_S = 10  # after SIGTERM, what runs may finish for this long before the worker is killed
# granian warns at every start when the Python threads outnumber 2 x CPUs + 1; /predict's LLM calls release the
# GIL, so more threads than cores is what we want here, and a warning at every start would be noise
_GRANIAN_THREADS_WARNING = "Configuration allows spawning up to"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the Label Studio ML backend",
        description=(
            "Serve /health /setup /predict /versions /webhook /metrics for Label Studio. Configuration: the YAML "
            "named by --config or $LWC_CONFIG, merged with each project's extra_params; env BASIC_AUTH_USER/"
            "BASIC_AUTH_PASS (basic auth), WEBHOOK_SECRET, LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY (see docs/server.md)."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9090, help="port (default: %(default)s)")
    parser.add_argument(
        "--config", default=None, help="backend YAML (default: $LWC_CONFIG, else built-in defaults)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="Python threads that run requests (default: %(default)s; a burst of webhooks is stored in as few "
        "commits as it has threads)",
    )
    parser.add_argument(
        "--http-server",
        choices=HTTP_SERVERS,
        default="granian",
        help=(
            "granian (default: its HTTP handling runs in Rust, 0.4-0.7 times waitress's CPU per webhook, "
            "docs/learning-loop.md) or waitress (pure Python, one process)"
        ),
    )
    parser.add_argument(
        "--dev", action="store_true", help="use the Flask development server (not for production)"
    )
    parser.add_argument(
        "--no-warm-up", action="store_true", help="load the LLM at the first /predict instead of at start"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ls_backend.cli import CLIError
    from ls_backend.server.app import create_app
    from ls_backend.server.config import load_config

    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if args.threads < 1:
        raise CLIError(f"--threads must be positive, got {args.threads}")
    server = "dev" if args.dev else args.http_server
    # read and check the configuration here, so that a bad one is refused before any process starts
    config = load_config(args.config)
    logger.info("serving the ML backend on http://%s:%d (%s)", args.host, args.port, server)
    if server == "granian":
        make_app = functools.partial(create_app, config, warm_up=not args.no_warm_up)
        if not serve_granian(make_app, args.host, args.port, args.threads):
            raise CLIError("the server's worker process stopped unexpectedly (its error is in the log above)")
        return 0
    app = create_app(config, warm_up=not args.no_warm_up)
    if args.dev:
        app.run(host=args.host, port=args.port, threaded=True)
    else:
        serve_waitress(app, args.host, args.port, args.threads)
    return 0


def serve_granian(make_app: Callable[[], Any], host: str, port: int, threads: int) -> bool:
    """Serve the WSGI app that ``make_app()`` builds with granian, as ``lwc serve`` does (also what
    scripts/bench_webhooks.py measures); returns when the server stops: True after SIGTERM/SIGINT, False when its
    worker stopped on its own (an error while building the app, or the worker killed).

    granian runs the app in one worker process that it starts (so ``make_app`` must be picklable where processes
    are spawned rather than forked) and that builds the app there: the app's threads (learning loop, jobs) start
    in the process that serves. This process only supervises; if it is killed, even with SIGKILL, the worker
    follows it instead of keeping the port and the label store (:func:`_follow_supervisor`). One worker, because
    the learning loop's state is per process."""
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels
    from granian.server import MPServer

    logging.getLogger("_granian").addFilter(
        lambda record: not record.getMessage().startswith(_GRANIAN_THREADS_WARNING)
    )
    server = MPServer(
        "label-with-confidence",  # a name for granian's log; the app comes from the loader below
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=1,
        blocking_threads=threads,
        http=HTTPModes.http1,
        websockets=False,
        log_level=LogLevels.warning,
        respawn_failed_workers=False,
        workers_kill_timeout=STOP_TIMEOUT_S,
    )
    loader = functools.partial(_worker_app, make_app, os.getpid())
    try:
        server.serve(target_loader=loader, wrap_loader=False)
    except SystemExit as stop:  # granian exits 1 when a worker stopped on its own
        if stop.code:
            return False
        raise
    return True


def _worker_app(make_app: Callable[[], Any], supervisor_pid: int) -> Any:
    """In granian's worker process: follow the supervisor, then build the app; a bad configuration is reported in
    one line as the CLI reports it (exit status 2), anything else with its traceback (exit status 1)."""
    from ls_backend.cli import USER_ERRORS, error_line

    _follow_supervisor(supervisor_pid)
    try:
        return make_app()
    except USER_ERRORS as e:
        logger.error("%s", error_line("serve", e))
        code = 2
    except Exception:
        logger.exception("the ML backend could not start")
        code = 1
    logging.shutdown()
    os._exit(code)  # not SystemExit: multiprocessing would print its traceback again


def _follow_supervisor(supervisor_pid: int) -> None:
    """End this worker when the supervisor process dies, SIGKILL included (SIGTERM is granian's to handle).

    Linux: the kernel sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread
    checks the parent every second."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    else:

        def watch() -> None:
            while os.getppid() == supervisor_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="lwc-follow-supervisor", daemon=True).start()
    if os.getppid() != supervisor_pid:  # it died before the prctl
        os._exit(1)


def serve_waitress(app: Any, host: str, port: int, threads: int) -> None:
    """Serve ``app`` with waitress, as ``lwc serve --http-server waitress`` does."""
    import waitress

    # waitress warns once per request that waits for a free thread: in a burst of webhooks (hundreds at once,
    # as Label Studio sends them) that is a log line per request, and about 6% of the burst's CPU (measured with
    # py-spy on scripts/bench_webhooks.py); queueing shows in /metrics' latency histogram instead
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    waitress.serve(app, host=host, port=port, threads=threads, ident="label-with-confidence")
