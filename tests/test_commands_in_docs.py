"""Every featpipe command example in README.md and docs/*.md parses: its command exists, and every
option it uses is one of that command's options. A renamed or misspelled option fails here, not a reader.

What counts as an example: in a fenced block marked bash, sh or shell, each line that starts with
``featpipe`` (a trailing backslash continues it); in any other fenced block (program output), only lines
with a ``$ `` prompt; and in the prose, each inline code span that starts with ``featpipe `` (a span may
wrap across lines). A command written in capitals (``featpipe COMMAND --help``) is a placeholder.
"""
from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from featpipe.cli import COMMANDS, load_command

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`(featpipe [^`]+)`")
SHELL = {"bash", "sh", "shell"}
GLOBAL_OPTIONS = {"--verbose", "-v", "--help"}


def examples(text: str) -> list[str]:
    """The command examples of one markdown page, each on one line."""
    found = []
    for lang, block in FENCE.findall(text):
        lines = block.split("\n")
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            if line.startswith("$ "):
                line = line[2:]
            elif lang not in SHELL:
                line = ""
            if line.startswith("featpipe ") or line == "featpipe":
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1].rstrip() + " " + lines[i].strip()
                found.append(line)
            i += 1
    found += [" ".join(span.split()) for span in INLINE.findall(FENCE.sub("", text))]
    return found


@cache
def options_of(command: str) -> frozenset[str]:
    """Every option name ``featpipe COMMAND`` accepts (``--flag`` and ``--no-flag`` alike)."""
    params = load_command(command).params
    return frozenset(name for p in params for name in (*p.opts, *p.secondary_opts) if name.startswith("-"))


def problems(example: str) -> list[str]:
    """What does not parse in one example: an unknown command, or options its command does not have."""
    tokens = shlex.split(example, comments=True)
    assert tokens and tokens[0] == "featpipe", example
    rest = tokens[1:]
    while rest and rest[0] in GLOBAL_OPTIONS:
        rest = rest[1:]
    if not rest:
        return []
    command, args = rest[0], rest[1:]
    if re.fullmatch(r"[A-Z][A-Z-]*", command):  # a placeholder: COMMAND
        return [f"{a}: not an option of featpipe" for a in args if a.startswith("-") and a not in GLOBAL_OPTIONS]
    if command not in COMMANDS:
        return [f"{command}: no such command (featpipe has {', '.join(COMMANDS)})"]
    known = options_of(command) | {"--help"}
    return [f"{a}: featpipe {command} has no such option" for a in args
            if re.match(r"--?[A-Za-z]", a) and a.split("=", 1)[0] not in known]


def all_examples() -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), ex) for page in PAGES for ex in examples(page.read_text())]


def test_the_docs_have_command_examples_for_every_command():
    """The extraction of examples works (a broken pattern would find nothing and pass everything)."""
    commands = {shlex.split(ex, comments=True)[1] for _, ex in all_examples()}
    assert set(COMMANDS) <= commands, set(COMMANDS) - commands


@pytest.mark.parametrize("page", [p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_command_example_parses(page):
    bad = [f"{ex}\n    -> {p}" for ex in examples((ROOT / page).read_text()) for p in problems(ex)]
    assert not bad, f"{page}: command examples that do not parse:\n" + "\n".join(bad)


@pytest.mark.parametrize("example, problem", [
    ("featpipe extract photos/ -o f.h5 --modle resnet50", "--modle: featpipe extract has no such option"),
    ("featpipe fit f.h5 -o m.skops --classifer logreg", "--classifer: featpipe fit has no such option"),
    ("featpipe extract photos/ -o f.h5 --model resnet50 --scheduler=tcp://x:1 --sharddir s3://b",
     "--sharddir: featpipe extract has no such option"),
    ("featpipe extrct photos/ -o f.h5", "extrct: no such command"),
    ("featpipe guide photos/ --epochs 3", "--epochs: featpipe guide has no such option"),  # another command's option
])
def test_a_wrong_option_or_command_is_caught(example, problem):
    assert any(p.startswith(problem) for p in problems(example)), problems(example)


def test_what_counts_as_an_example():
    text = """
```bash
featpipe extract a -o b.h5 \\
    --model resnet18   # a comment --not-an-option
```

```
$ featpipe info b.h5
featpipe --help   0.44   output, not a command
```

Prose with `featpipe fit b.h5
--stream` wrapped, and `featpipe.load(path)` (Python, not a command).
"""
    assert examples(text) == ["featpipe extract a -o b.h5 --model resnet18   # a comment --not-an-option",
                              "featpipe info b.h5", "featpipe fit b.h5 --stream"]
    assert problems(examples(text)[0]) == []
