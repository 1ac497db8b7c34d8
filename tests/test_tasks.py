import pytest

from ls_backend.tasks import TaskSpec, TaskSpecError, load_tasks


def test_load_yaml(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "tasks:\n  spam:\n    question: Is this SMS spam?\n    classes: ['yes', 'no']\n    description: Spam texts.\n"
    )
    tasks = load_tasks(path)
    assert tasks["spam"] == TaskSpec("spam", "Is this SMS spam?", ("yes", "no"), "Spam texts.")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("tasks: {}\n", "at least one task"),
        ("tasks:\n  t:\n    question: q\n    classes: [yes, no]\n", "quote yes/no"),
        ("tasks:\n  t:\n    classes: [a, b]\n", "missing 'question'"),
        ("tasks:\n  t:\n    question: q\n    classes: [a]\n", "at least 2 classes"),
        ("tasks:\n  t:\n    question: q\n    classes: [a, a]\n", "distinct"),
        ("tasks:\n  t:\n    question: q\n    classes: [a, b]\n    colour: red\n", "unknown field"),
    ],
)
def test_bad_task_files(tmp_path, body, message):
    path = tmp_path / "tasks.yaml"
    path.write_text(body)
    with pytest.raises(TaskSpecError, match=message):
        load_tasks(path)


def test_examples_round_trip_and_are_checked(tmp_path):
    spec = TaskSpec("t", "q?", ("yes", "no"), examples=(("buy now", "yes"), ("hi mum", "no")))
    assert TaskSpec.from_dict("t", spec.to_dict()) == spec
    with pytest.raises(TaskSpecError, match="example"):
        TaskSpec("t", "q?", ("yes", "no"), examples=(("text", "maybe"),))
