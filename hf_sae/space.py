"""The explorer as a Hub Space: `write_space` writes a folder that runs it on an SAE repo (app.py, requirements.txt,
README.md with `sdk: gradio`, and a copy of the hf_sae package); `push_space` (`hf-sae push --space SPACE_ID`)
uploads it. Gradio is an optional dependency: `pip install 'hf-sae[app]'`.
"""

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from .errors import ArgumentError
from .hub_client import push_errors
from .layout import probe_writable


def require_gradio():
    """The gradio module, or one clear line on how to install it."""
    try:
        import gradio
    except ImportError:
        raise ArgumentError(
            "The explorer needs Gradio: pip install 'hf-sae[app]' (or `pip install gradio`)."
        ) from None
    return gradio


SPACE_APP = '''"""The hf_sae feature explorer for {repo_id}, as a Hub Space (written by `hf-sae app --write_space`)."""

from hf_sae.app import build_app, load_explorer

build_app(load_explorer({repo_id!r}, hookpoint={hookpoint!r})).launch()
'''

SPACE_README = """---
title: {title}
emoji: 🔬
colorFrom: yellow
colorTo: red
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
models:
{models}
---

# {title}

The hf_sae feature explorer for [{repo_id}](https://huggingface.co/{repo_id}): the feature list with search and
sort, each feature's statistics, contexts and logit effects, the features of a typed prompt, and a steering
playground. The `hf_sae` folder is the package itself, so the Space needs nothing that is not on PyPI.
"""


def write_space(output_dir: str | os.PathLike, repo_id: str, *, hookpoint: str | None = None, base_model=None) -> Path:
    """Write a Hub Space folder that runs the explorer on the SAE repo `repo_id`: app.py, requirements.txt,
    README.md (Space front matter, `sdk: gradio`) and a copy of the hf_sae package. Push it with
    `huggingface-cli upload --repo-type space SPACE_ID OUTPUT_DIR` (or `HfApi.upload_folder`)."""
    gr = require_gradio()
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        there = "holds files" if output_dir.is_dir() else "is a file"
        raise ArgumentError(f"Expected a new or empty folder for the Space; {output_dir} {there}. Choose another.")
    probe_writable(output_dir, "write_space")  # a parent that is a file, or no permission: one clear line
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "app.py").write_text(SPACE_APP.format(repo_id=repo_id, hookpoint=hookpoint))
    requirements = _requirements() + [f"gradio=={gr.__version__}"]
    (output_dir / "requirements.txt").write_text("\n".join(requirements) + "\n")
    models = "".join(f"  - {m}\n" for m in (repo_id, base_model) if m).rstrip("\n")
    title = f"{repo_id.split('/')[-1]} explorer"
    readme = SPACE_README.format(title=title, gradio_version=gr.__version__, models=models, repo_id=repo_id)
    (output_dir / "README.md").write_text(readme)
    package = Path(resources.files("hf_sae"))
    shutil.copytree(package, output_dir / "hf_sae", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return output_dir


def push_space(
    space_id: str,
    repo_id: str,
    *,
    hookpoint: str | None = None,
    base_model: str | None = None,
    token: str | None = None,
    private: bool = False,
):
    """Create (if needed) the Gradio Space `space_id` and upload `write_space`'s folder for the SAE repo `repo_id`
    to it in one commit. Returns the `CommitInfo`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    intact = (f"Nothing of the Space was uploaded, and the SAE repo {repo_id} is as this step found it (SAEs pushed "
              f"before it are there). Check that the token can write to {space_id}, then push the Space again "
              f"(`hf-sae push ... --space {space_id}`, or `hf-sae app --write_space DIR` and `hf upload --repo-type "
              f"space {space_id} DIR`).")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hf-sae-space-") as tmp:
        folder = write_space(Path(tmp) / "space", repo_id, hookpoint=hookpoint, base_model=base_model)
        with push_errors(f"Pushing the Space {space_id!r}", intact):
            api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            message = f"Feature explorer for {repo_id}"
            return api.upload_folder(repo_id=space_id, repo_type="space", folder_path=folder, commit_message=message)


def _requirements() -> list[str]:
    """hf_sae's own dependencies, as installed (the Space installs them from PyPI)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        listed = requires("hf-sae") or []
    except PackageNotFoundError:  # running from a source tree without an install
        listed = []
    return [r for r in listed if "extra ==" not in r]
