"""Sphinx configuration for the bmcd documentation (built in CI with -W)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src")))

from bmcd import __version__  # noqa: E402

project = "bmcd"
author = "bmcd developers"
copyright = "2026, bmcd developers"
release = __version__
version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
]

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
# Heavy optional dependencies are imported lazily inside functions, so autodoc never needs
# them; mocking keeps the docs buildable with only the core + docs extras installed.
autodoc_mock_imports = ["tensorflow", "keras", "tf2onnx", "dask", "distributed"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

intersphinx_mapping = {}  # offline builds: no inventories are fetched

html_theme = "furo"
html_title = f"bmcd {version}"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
nitpicky = False
