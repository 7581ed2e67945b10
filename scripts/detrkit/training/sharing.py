"""`--push-to-hub REPO [--private]`: upload the exported folder (weights, config, code, processor, card) in one
commit.

`model.push_to_hub(repo)` uploads what the model's save_pretrained writes, which does not include the image
processor; `processor.push_to_hub(repo)` adds it in a second commit. Uploading the finished folder, as here,
keeps model, processor and card together in one.
"""
from __future__ import annotations

from pathlib import Path


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload detector trained with detrkit") -> str:
    """Create `repo_id` (private if asked; an existing one is reused) and upload `folder`; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    for needed in ("config.json", "preprocessor_config.json", "README.md"):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"{folder} has no {needed}; nothing complete to push")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder),
                               commit_message=commit_message, repo_type="model")
    return str(getattr(commit, "commit_url", commit))
