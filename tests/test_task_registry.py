"""The task plug-in: the registry is the one list of task names, and the facts other modules ask are task fields."""

from pipelines.recipe import TaskName
from pipelines.tasks import TASK_NAMES, TASK_SECTIONS, get_task, registry


def test_registry_names_are_the_schemas_names():
    assert tuple(registry()) == TASK_NAMES == TaskName.__args__
    assert all(get_task(name).name == name for name in TASK_NAMES)
    assert set(TASK_SECTIONS.values()) <= set(TASK_NAMES)


def test_task_facts():
    facts = {name: (t.generates, t.demo_feed, t.throughput_unit, t.scores_packed_windows, t.trains_on_windows,
                    t.head_in_config) for name, t in registry().items()}
    assert facts == {
        "causal_lm": (False, "continue", "tokens", True, True, False),
        "seq2seq": (True, "source", "tokens", False, False, False),
        "denoising": (False, "source", "tokens", False, True, False),
        "classification": (False, "classify", "examples", False, False, True),
        "chat": (True, "turn", "tokens", False, False, False),
    }
