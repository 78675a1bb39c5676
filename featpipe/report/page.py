"""The page: the report's template rendered with Jinja2, every string from the data escaped.

Class names and file names are user input (a class folder may be called ``<script>``): the
environment autoescapes everything, so no value reaches the page as markup.
"""
from __future__ import annotations

from pathlib import Path

PAGE = "index.html"
TEMPLATE = "report.html.j2"


def environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("featpipe.report", "templates"),
        autoescape=True,  # every {{ }} is escaped, whatever the template's name
        undefined=jinja2.StrictUndefined,  # a name the template expects and the context lacks fails loudly
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(context: dict) -> str:
    """The page's HTML for ``context`` (what build.py gathers)."""
    return environment().get_template(TEMPLATE).render(**context)


def write(folder: Path, context: dict) -> Path:
    """Write ``folder/index.html`` whole, so a reader never sees half a page."""
    from .._util import atomic_write

    path = folder / PAGE
    with atomic_write(path) as tmp:
        tmp.write_text(render(context), encoding="utf-8")
    return path
