"""pyproject.toml, environment.yml and binder/environment.yml must list the same packages."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
_SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def _normalize(requirement: str) -> tuple[str, str]:
    """(PEP 503 name, version specifier without spaces): 'Jupyter_Bokeh >= 1' -> ('jupyter-
    bokeh', '>=1'). conda-forge and PyPI spell some names with _ and some with -."""
    m = _SPEC.match(requirement)
    assert m, f"cannot parse requirement {requirement!r}"
    return re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(3).replace(" ", "")


def _pyproject() -> set[tuple[str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    return {_normalize(r) for r in reqs} | {("python", project["requires-python"])}


def _conda(path: Path) -> set[tuple[str, str]]:
    env = yaml.safe_load(path.read_text())
    reqs: list[str] = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            reqs += dep["pip"]
        elif dep != "pip":  # the installer for the pip section, not a labkit dependency
            reqs.append(dep)
    return {_normalize(r) for r in reqs}


def test_environment_yml_matches_pyproject() -> None:
    want, have = _pyproject(), _conda(ROOT / "environment.yml")
    assert have == want, (
        f"only in pyproject.toml: {sorted(want - have)}; "
        f"only in environment.yml: {sorted(have - want)}"
    )


def test_binder_environment_is_the_same_file() -> None:
    assert (ROOT / "binder" / "environment.yml").read_text() == (
        ROOT / "environment.yml"
    ).read_text(), "copy environment.yml to binder/environment.yml"


def test_environment_uses_conda_forge() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]


def test_normalize_spells_names_one_way() -> None:
    assert _normalize("Jupyter_Bokeh") == ("jupyter-bokeh", "")
    assert _normalize("bokeh >= 3.4") == ("bokeh", ">=3.4")
    assert _normalize("python>=3.11") == ("python", ">=3.11")
