"""Sphinx configuration: furo theme, Markdown pages through MyST, API pages through autodoc."""

from __future__ import annotations

import allotment

project = "allotment"
author = "The allotment developers"
copyright = "2026, The allotment developers"
release = allotment.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "undoc-members": False}

html_theme = "furo"
html_title = f"allotment {release}"
exclude_patterns = ["_build"]
