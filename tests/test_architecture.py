"""The house rule of docs/ARCHITECTURE.md: imports point from the edge to the core, and the core does no I/O."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ls_backend"
CORE = {"confidence", "calibration", "metrics", "sampling", "ensemble", "stats"}
# what each layer may import from the project (beyond itself)
ALLOWED = {
    "core": CORE,
    "scores": set(),
    "tasks": set(),
}
IO_MODULES = {
    "os", "io", "sqlite3", "socket", "urllib", "requests", "flask", "boto3", "shutil", "subprocess", "pathlib",
    "tempfile", "logging",
}  # fmt: skip
# calls through these reach files or process-wide state: the core takes a storage object and leaves logging alone
IO_CALLS = ("optuna.storages", "optuna.logging")


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _project_imports(path: Path) -> tuple[set[str], set[str]]:
    """(project modules imported, top-level third-party/stdlib modules imported) by one file."""
    project, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ls_backend":
                if len(parts) > 1:
                    project.add(parts[1])
            else:
                external.add(parts[0])
    return project, external


def _files(module: str) -> list[Path]:
    folder = PACKAGE / module
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{module}.py"]


@pytest.mark.parametrize("module", sorted(CORE))
def test_core_imports_only_the_core_and_does_no_io(module):
    for path in _files(module):
        project, external = _project_imports(path)
        assert project <= CORE, f"{path.name} (core) imports {sorted(project - CORE)} from the edge"
        assert not external & IO_MODULES, (
            f"{path.name} (core) imports I/O modules {sorted(external & IO_MODULES)}"
        )
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = {_dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        reached = sorted(c for c in calls if c.startswith(IO_CALLS))
        assert not reached, f"{path.name} (core) calls {reached}"
        imported = {
            f"{n.module}.{a.name}" if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
        assert not {i for i in imported if i.startswith(IO_CALLS)}, (
            f"{path.name} (core) imports optuna storage"
        )


@pytest.mark.parametrize("module", ["scores", "tasks"])
def test_data_formats_import_nothing_from_the_project(module):
    for path in _files(module):
        project, _ = _project_imports(path)
        assert not project - {module}, f"{path.name} imports {sorted(project)}"


@pytest.mark.parametrize("module", ["files", "database", "markdown"])
def test_shared_helpers_import_nothing_from_the_project(module):
    """The helpers every layer may share (file hashes and atomic writes; the durable SQLite files' connections;
    the reports' markdown) depend on none."""
    for path in _files(module):
        project, _ = _project_imports(path)
        assert not project - {module}, f"{path.name} imports {sorted(project)}"


def test_no_test_loads_a_script_by_its_path():
    """What a test checks lives in the package: a script is a thin entry point, run as a subprocess if at all."""
    for path in sorted((PACKAGE.parent / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {_dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        names |= {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names
        }
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        loaders = sorted(
            n for n in names if n.endswith(("spec_from_file_location", "run_path")) or n == "runpy"
        )
        assert not loaders, f"{path.name} loads code by its path: {loaders}"


# the drivers: the CLI, the server, and the benchmark's studies, which measure what the server serves
DRIVERS = {"cli", "server", "benchmark"}


def test_nothing_imports_the_cli_or_the_server_except_the_drivers():
    for path in PACKAGE.rglob("*.py"):
        layer = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        project, _ = _project_imports(path)
        if layer not in DRIVERS:
            assert not project & {"cli", "server"}, f"{path} imports {sorted(project & {'cli', 'server'})}"
        if layer != "cli":  # the CLI drives everything and is driven by nothing (shared code lives below it)
            assert "cli" not in project, f"{path} imports the CLI"


ADAPTER = "labelstudio"  # the Label Studio adapter: every label-studio-sdk call, and nothing of the project


def test_only_the_label_studio_adapter_imports_label_studio_sdk():
    for path in PACKAGE.rglob("*.py"):
        _, external = _project_imports(path)
        if path.relative_to(PACKAGE).parts[0] != ADAPTER:
            assert "label_studio_sdk" not in external, f"{path} imports label_studio_sdk outside {ADAPTER}/"


def test_the_label_studio_adapter_imports_nothing_from_the_project():
    """So that both the learning loop and the server may import it, and imports keep pointing one way."""
    for path in _files(ADAPTER):
        project, _ = _project_imports(path)
        assert not project - {ADAPTER}, f"{path.name} imports {sorted(project - {ADAPTER})}"


def test_the_package_imports_nothing_from_the_tests_or_the_scripts():
    for path in PACKAGE.rglob("*.py"):
        _, external = _project_imports(path)
        assert not external & {"tests", "scripts"}, path


def test_no_pickle_anywhere():
    for path in PACKAGE.rglob("*.py"):
        _, external = _project_imports(path)
        assert not external & {"pickle", "dill", "joblib", "cloudpickle"}, path


def test_reading_the_server_config_loads_neither_flask_nor_the_app():
    import subprocess
    import sys

    code = (
        "import sys, ls_backend.server.config, ls_backend.server\n"
        "heavy = sorted(m for m in ('flask', 'torch', 'transformers', 'ls_backend.server.app') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "from ls_backend.server import create_app, LabelSpec\n"
        "assert 'flask' in sys.modules and callable(create_app) and LabelSpec.__name__ == 'LabelSpec'\n"
        "assert sorted(ls_backend.server.__all__) == sorted(ls_backend.server._HOMES)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
