"""Loading a finished run's model: the one place that joins the run folder, model loading and the task plug-in.

It sits above `pipelines.tasks` and `pipelines.modeling` (which sit above `pipelines.runs`, plain file I/O), so
the demo, export and tests load a run the same way without an import cycle.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import modeling
from pipelines.errors import TuneforgeError
from pipelines.runs import load_run_recipe
from pipelines.tasks import get_task


def load_run_model(run_dir: str | Path):
    """A finished run's model exactly as trained (LoRA adapters kept unmerged), its tokenizer, recipe and task.

    Returns:
        (recipe, task, model in eval mode, tokenizer)

    Raises:
        TuneforgeError: not a run folder, or the run has no saved model (training did not finish).
    """
    run_dir = Path(run_dir)
    recipe = load_run_recipe(run_dir)
    if not (run_dir / "model").is_dir():
        raise TuneforgeError(f"{str(run_dir)!r} has no model/: training did not finish; train or resume it first")
    task = get_task(recipe.task)
    tokenizer = modeling.load_tokenizer(str(run_dir / "model"))
    model = modeling.load_model(str(run_dir / "model"), task.auto_model, merge=False)
    return recipe, task, model.eval(), tokenizer
