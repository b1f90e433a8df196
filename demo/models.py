"""The runs the demo serves and the models it has loaded.

The app only names runs that `pipelines.runs.list_runs` found under its folder: the UI sends a run's key (its
folder name inside that folder) and never a path. Models load on first use and stay in an LRU cache bounded by
the bytes of their parameters and buffers, so a folder with many runs cannot exhaust memory. A run that
disappears (deleted, or being retrained) is reported as gone instead of being served from a stale cache entry.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from demo import compute
from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe
from pipelines.run_model import load_run_model
from pipelines.runs import RunInfo, list_runs
from pipelines.tasks import Task

# transformers 5 `from_pretrained` is not safe to run concurrently for different models (tied weights can be
# left on the meta device: "Cannot copy out of meta tensor"), so loads are serialised process-wide.
_FROM_PRETRAINED = threading.Lock()


@dataclass
class LoadedModel:
    """A model ready for inference.

    Attributes:
        key: the cache key (run key, or `<run key>#base` for a separately loaded base model).
        version: identifies the files it was loaded from (metrics.json's modification time, ns); a newer
            version on disk makes the cache reload.
        recipe / task: the run's resolved recipe and task record.
        model: in eval mode on the demo's device; a `PeftModel` for LoRA runs (adapters unmerged).
        tokenizer: the run's own tokenizer.
        nbytes: parameter + buffer bytes, what the cache budget counts.
        lock: held while the model or its tokenizer works. Serialises inference on one model, which is required
            because `PeftModel.disable_adapter()` (the base model in side by side) changes the model for every
            thread, and a fast tokenizer raises "Already borrowed" when one thread changes its truncation while
            another decodes. Reentrant, so helpers that take it may call each other.
    """

    key: str
    version: int
    recipe: Recipe
    task: Task
    model: torch.nn.Module
    tokenizer: object
    nbytes: int
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes held by a model's parameters and buffers (tied weights counted once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class RunCatalog:
    """The finished runs directly under one folder, by key (folder name).

    Args:
        root: the folder `tuneforge demo` was given.

    Raises:
        TuneforgeError: `root` is not a directory.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)  # as the user gave it, for display
        self.path = self.root.resolve()  # for reading: later changes of the working directory do not matter
        if not self.path.is_dir():
            raise TuneforgeError(
                f"demo: runs folder {str(self.root)!r} does not exist; train a run first "
                "(tuneforge train recipes/gpt/pretrain-tiny.yaml) or pass the folder that holds your runs"
            )
        self._runs: dict[str, RunInfo] = {}
        self.refresh()

    def refresh(self) -> list[RunInfo]:
        """Rescan the folder (finished runs only, as `list_runs` defines them)."""
        runs = list_runs(self.path) if self.path.is_dir() else []
        self._runs = {run.path.name: run for run in runs}  # one assignment: readers see the old or new dict
        return runs

    def runs(self, tasks: tuple[str, ...] | None = None, *, with_base: bool = False) -> list[RunInfo]:
        """Known runs, optionally only those of `tasks` and (with_base) those finetuned from a base model."""
        out = [r for r in self._runs.values() if tasks is None or r.task in tasks]
        return [r for r in out if r.method not in ("scratch", "baseline")] if with_base else out

    def get(self, key: str | None) -> RunInfo:
        """The run called `key`, checked to still be a finished run on disk.

        Raises:
            TuneforgeError: no run picked, an unknown key, or a run that has since been deleted or restarted.
        """
        if not key:
            raise TuneforgeError("run: none selected; pick a run from the list (press Refresh runs if it is empty)")
        run = self._runs.get(key)
        if run is None:
            raise TuneforgeError(
                f"run: {key!r} is not one of the finished runs under {str(self.root)!r}; press Refresh runs and "
                "pick one from the list"
            )
        if run_version(run) is None:
            raise TuneforgeError(
                f"run: {key!r} is no longer a finished run under {str(self.root)!r} (deleted, or being "
                "retrained); press Refresh runs"
            )
        return run


def base_is_adapters_off(model: torch.nn.Module) -> bool:
    """Whether `model`'s base is itself with its LoRA adapters switched off: a PEFT model whose adapter left the base
    weights untouched (`bias: none`; trained biases live in the base layers and stay on under `disable_adapter`)."""
    from peft import PeftModel

    return isinstance(model, PeftModel) and all(c.bias == "none" for c in model.peft_config.values())


def run_version(run: RunInfo) -> int | None:
    """metrics.json's modification time (ns) while the run is finished and has a model, else None."""
    from pipelines.runs import is_finished

    try:
        if not (run.path / "model").is_dir() or not is_finished(run.path):
            return None
        return (run.path / "metrics.json").stat().st_mtime_ns
    except (OSError, ValueError):  # deleted between the checks, or metrics.json half-written by hand
        return None


class ModelCache:
    """Least-recently-used models, bounded by the bytes of their weights.

    A model larger than the whole budget is still served, alone. Evicted models are freed once no request
    holds them any more.

    Args:
        max_bytes: budget for the sum of `LoadedModel.nbytes`.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # guards _items and _loading; never held while a model loads
        self._loading: dict[str, threading.Lock] = {}

    @property
    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(item.nbytes for item in self._items.values())

    def get(self, key: str, version: int, load: Callable[[], LoadedModel]) -> LoadedModel:
        """The cached model for `key` at `version`, loading it (once, even under concurrent requests) if needed."""
        with self._lock:
            hit = self._fresh(key, version)
            if hit is not None:
                return hit
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._fresh(key, version)
                if hit is not None:
                    return hit
                self._items.pop(key, None)  # an older version of the same run
            item = load()
            with self._lock:
                self._items[key] = item
                self._evict(keep=key)
        return item

    def drop(self, prefix: str) -> None:
        """Forget every entry whose key is `prefix` or starts with `prefix#` (a run and its base)."""
        with self._lock:
            for key in [k for k in self._items if k == prefix or k.startswith(prefix + "#")]:
                del self._items[key]
        _release_memory()

    def _fresh(self, key: str, version: int) -> LoadedModel | None:
        item = self._items.get(key)
        if item is None or item.version != version:
            return None
        self._items.move_to_end(key)
        return item

    def _evict(self, keep: str) -> None:
        evicted = False
        while sum(i.nbytes for i in self._items.values()) > self.max_bytes and len(self._items) > 1:
            oldest = next(iter(self._items))
            if oldest == keep:
                break
            del self._items[oldest]
            evicted = True
        if evicted:
            _release_memory()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Registry:
    """Runs and their models, as the tabs use them.

    Args:
        root: the runs folder.
        max_bytes: model cache budget (parameter + buffer bytes).
        device: where models run; default CUDA when available, else CPU.
    """

    def __init__(self, root: str | Path, max_bytes: int, device: torch.device | None = None):
        self.catalog = RunCatalog(root)
        self.cache = ModelCache(max_bytes)
        self.device = device or default_device()

    def finetuned(self, key: str | None) -> LoadedModel:
        """The run's model as trained (LoRA adapters kept unmerged).

        Raises:
            TuneforgeError: see `RunCatalog.get`; or the model cannot be loaded.
        """
        run = self.run(key)
        version = run_version(run)
        return self.cache.get(run.path.name, version, lambda: self._load(run, version))

    def base(self, key: str | None) -> tuple[LoadedModel, bool]:
        """The model the run was finetuned from.

        For a LoRA run this is the same loaded model with its adapters switched off (no second copy), unless the
        adapter also trained the base's biases (`lora.bias` other than "none": PEFT cannot switch those off). That,
        a full or a head-only finetune loads the recipe's `model.base` separately, with the run's own config so a
        classifier gets the same label set (its head is then the untrained one that metrics.json's base_scores
        measured).

        Returns:
            (model, adapter_off): adapter_off is True when the caller must run it inside `disable_adapter()`.

        Raises:
            TuneforgeError: the run was trained from scratch (it has no base), or the base cannot be loaded.
        """
        run = self.run(key)
        if run.method in ("scratch", "baseline"):
            raise TuneforgeError(f"run: {run.name!r} was trained from scratch; it has no base model to compare with")
        tuned = self.finetuned(key)
        if base_is_adapters_off(tuned.model):
            return tuned, True
        version = run_version(run)
        return self.cache.get(f"{run.path.name}#base", version, lambda: self._load_base(run, tuned)), False

    def run(self, key: str | None) -> RunInfo:
        """The run called `key`, still finished on disk (see `RunCatalog.get`); a run that is gone leaves the cache.

        Raises:
            TuneforgeError: see `RunCatalog.get`.
        """
        try:
            return self.catalog.get(key)
        except TuneforgeError:
            if key:
                self.cache.drop(key)  # free the memory of a run that is gone
            raise

    @compute.on_compute  # one thread runs the models (see demo.compute)
    def _load(self, run: RunInfo, version: int) -> LoadedModel:
        with _FROM_PRETRAINED:
            recipe, task, model, tokenizer = load_run_model(run.path)
        model.to(self.device)
        return LoadedModel(run.path.name, version, recipe, task, model, tokenizer, model_bytes(model))

    @compute.on_compute
    def _load_base(self, run: RunInfo, tuned: LoadedModel) -> LoadedModel:
        from transformers import AutoConfig

        from pipelines import modeling

        kwargs = {}
        if tuned.task.head_in_config:  # the head's size and labels come from the run's config
            kwargs["config"] = AutoConfig.from_pretrained(run.path / "model", trust_remote_code=False)
        with _FROM_PRETRAINED:
            base = modeling.adapter_base(run.path / "model", tuned.recipe.model.base)  # runs/... from any directory
            model = modeling.load_model(base, tuned.task.auto_model, **kwargs)
        model.to(self.device).eval()
        return LoadedModel(
            f"{tuned.key}#base", tuned.version, tuned.recipe, tuned.task, model, tuned.tokenizer, model_bytes(model)
        )
