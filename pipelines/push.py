"""`tuneforge push RUN REPO` (and `output.push_to_hub: REPO`): upload a run's model folder to the Hugging Face Hub.

Exactly the run's `model/` folder goes up (weights or adapter, config, tokenizer, generation config and its model
card, which becomes the repo's README), through `huggingface_hub`'s `create_repo` + `upload_folder`, in one commit.
Nothing else of the run folder (checkpoints, logs, predictions, the recipe with local paths) is sent. `--dry-run`
lists the files instead. A Hub that cannot be reached fails fast with one message (exit 2), not a retry loop.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.errors import TuneforgeError


def files_to_push(run_dir: str | Path) -> list[str]:
    """The files `push` sends: every file under `run_dir/model/` (relative paths, sorted), hidden ones left out.

    Raises:
        TuneforgeError: the folder has no model/ (not a finished run).
    """
    model_dir = Path(run_dir) / "model"
    if not (model_dir / "README.md").is_file():
        raise TuneforgeError(f"push: {str(run_dir)!r} has no model/ with a model card (README.md); push a finished "
                             "run folder (runs/NAME)")
    # Hidden files (editors' and tools' leftovers) are never part of the model.
    return sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts))


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, endpoint: str | None = None,
             token: str | None = None) -> str:
    """Create `repo_id` (if needed) and upload the run's model folder to it in one commit.

    Args:
        run_dir: a finished run folder.
        repo_id: "user/name" or "org/name".
        private: create the repo private (an existing repo keeps its visibility).
        endpoint: the Hub's URL (default: `HF_ENDPOINT`, else https://huggingface.co).
        token: a write token (default: `HF_TOKEN` or the cached `hf auth login` token).

    Returns:
        The URL of the commit.

    Raises:
        TuneforgeError: not a finished run, an invalid repo id, offline mode, no token, or the Hub unreachable or
            refusing the upload (the message says which and what to do).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    files = files_to_push(run_dir)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise TuneforgeError(f"push: repo {repo_id!r} is not a Hub repo id ({exc}); give user/name") from None
    if "/" not in repo_id:
        raise TuneforgeError(f"push: repo {repo_id!r} needs its owner: give user/{repo_id} or org/{repo_id}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise TuneforgeError("push: HF_HUB_OFFLINE is set, so nothing may reach the Hub; unset it to push")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=Path(run_dir) / "model", allow_patterns=files,
                                 commit_message=f"tuneforge push {Path(run_dir).name}", repo_type="model")
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        hint = "log in with `hf auth login` or set HF_TOKEN to a write token" if status in (401, 403) else \
            "check the repo id and your rights on it"
        raise TuneforgeError(f"push: the Hub refused the upload to {repo_id!r} (HTTP {status}): {hint}") from None
    except Exception as exc:  # httpx / OS errors: no route, refused connection, DNS, TLS, timeout
        if not isinstance(exc, OSError) and type(exc).__module__.split(".")[0] not in ("httpx", "httpcore"):
            raise
        raise TuneforgeError(
            f"push: cannot reach the Hub at {api.endpoint} ({type(exc).__name__}: {exc}); check the network, "
            "a proxy, or HF_ENDPOINT"
        ) from None
    return str(getattr(info, "commit_url", info))


def push_finished(run_dir: str | Path, repo_id: str) -> str:
    """`output.push_to_hub`: push a run that just finished; a failure says the run itself is saved.

    Raises:
        TuneforgeError: as `push_run`, with the command that retries the upload.
    """
    try:
        return push_run(run_dir, repo_id)
    except TuneforgeError as exc:
        raise TuneforgeError(f"{exc}. The run finished and is saved in {str(run_dir)!r}; upload it later with "
                             f"`tuneforge push {run_dir} {repo_id}`") from None
