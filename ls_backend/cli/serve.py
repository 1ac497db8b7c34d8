"""``lwc serve``: run the Label Studio ML backend (waitress; the Flask dev server with ``--dev``)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger(__name__)


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
        "--threads", type=int, default=8, help="waitress worker threads (default: %(default)s)"
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

    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if args.threads < 1:
        raise CLIError(f"--threads must be positive, got {args.threads}")
    app = create_app(args.config, warm_up=not args.no_warm_up)
    logger.info(
        "serving the ML backend on http://%s:%d (%s)", args.host, args.port, "dev" if args.dev else "waitress"
    )
    if args.dev:
        app.run(host=args.host, port=args.port, threaded=True)
    else:
        serve_waitress(app, args.host, args.port, args.threads)
    return 0


def serve_waitress(app: Any, host: str, port: int, threads: int) -> None:
    """Serve ``app`` with waitress as ``lwc serve`` does (also what scripts/bench_webhooks.py measures)."""
    import waitress

    # waitress warns once per request that waits for a free thread: in a burst of webhooks (hundreds at once,
    # as Label Studio sends them) that is a log line per request, and about 6% of the burst's CPU (measured with
    # py-spy on scripts/bench_webhooks.py); queueing shows in /metrics' latency histogram instead
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    waitress.serve(app, host=host, port=port, threads=threads, ident="label-with-confidence")
