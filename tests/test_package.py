"""The package's shape: modules small enough to read whole (the layers and the absence of import cycles are checked
by `lint-imports` in `make lint`)."""

from pathlib import Path

import hf_sae

MAX_LINES = 500


def test_no_module_is_over_500_lines():
    package = Path(hf_sae.__file__).parent
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > 40  # the package itself was read, not an empty folder
    long = {
        str(path.relative_to(package)): n for path in modules if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these modules: {long}"


def test_every_subpackage_ships_in_the_wheel():
    """setuptools' package list is explicit (pyproject.toml): a subpackage missing there works in an editable install
    and is absent from the wheel."""
    import tomllib

    package = Path(hf_sae.__file__).parent
    listed = set(tomllib.loads((package.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("hf_sae", *p.parent.relative_to(package).parts)) for p in package.rglob("__init__.py")}
    assert "hf_sae.attribution" in found  # the walk saw the subpackages
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"


def test_the_top_level_launcher_ships_in_the_wheel():
    """The console script's launcher (hf_sae_cli.py, beside pyproject.toml, so that `--help` need not run
    hf_sae/__init__) is a top-level module: setuptools ships it only when [tool.setuptools] py-modules names it."""
    import tomllib

    root = Path(hf_sae.__file__).parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"])
    found = {path.stem for path in root.glob("*.py")}
    assert "hf_sae_cli" in found  # the repository's root was read
    assert found == listed, f"list the top-level modules in [tool.setuptools] py-modules: {sorted(found)}"
