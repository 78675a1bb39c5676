"""MkDocs hook: the repository's root pages that the docs link to (ARCHITECTURE.md) become pages of the site.

docs/ pages link them as ``../ARCHITECTURE.md``, which works in a checkout and on a code host, but MkDocs
knows only the files inside docs/, and ``--strict`` fails on a link it cannot resolve. So each root page is
added to the site under its own name, the docs pages' ``../NAME`` links are pointed at it, and its own links,
written relative to the repository root (``docs/x.md``, ``README.md``), are pointed at the site's pages
(``x.md``, and ``index.md`` for the README, which the site leaves out). Every link stays checked.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT_PAGES = ("ARCHITECTURE.md",)


def on_files(files, config):
    root = Path(config.config_file_path).parent
    for name in ROOT_PAGES:
        files.append(File.generated(config, name, abs_src_path=str(root / name)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri in ROOT_PAGES:
        markdown = re.sub(r"\]\(docs/", "](", markdown)
        return re.sub(r"\]\(README\.md(#[^)]*)?\)", "](index.md)", markdown)
    for name in ROOT_PAGES:
        markdown = markdown.replace(f"](../{name}", f"]({name}")
    return markdown
