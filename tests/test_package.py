"""Packaging: models/ ships as rankjax.models, never as a generic top-level `models` package."""

import importlib.metadata
import importlib.util


def test_model_zoo_imports_as_rankjax_models():
  from rankjax.models import dlrm
  assert dlrm.__name__ == "rankjax.models.dlrm"


def test_no_top_level_models_package_is_installed():
  assert importlib.util.find_spec("models") is None
  files = importlib.metadata.distribution("rankjax").files or []
  assert not [f for f in files if str(f).startswith("models/")]
  assert any(str(f).startswith("rankjax/models/") for f in files) or not any(
      str(f).startswith("rankjax/") and str(f).endswith(".py") for f in files)  # editable installs list no sources


def test_every_rankjax_subpackage_is_listed_for_installation():
  import tomllib
  from helpers import REPO
  listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
  found = {".".join(p.relative_to(REPO).parent.parts) for p in (REPO / "rankjax").rglob("__init__.py")}
  assert found | {"rankjax.models"} == listed
