"""README.md and docs/*.md stay true to the CLI: every command in their code blocks parses,
every flag they name exists for its stage, every relative link resolves.

Only the argument parser runs (no Ray, no torch), so a renamed or removed flag fails here, in
seconds, instead of in a reader's terminal.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
from pathlib import Path

import pytest

from fer_ray.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

# The stages whose flags a stage page may name; other pages may name any of these stages' flags.
STAGE_PAGES = {
    "prepare.md": [("prepare",)],
    "train.md": [("train",)],
    "evaluate.md": [("evaluate",), ("predict",)],
    "baseline-and-sweeps.md": [("baseline",), ("sweep", "svm"), ("sweep", "cnn")],
    "ensemble.md": [("ensemble",)],
    "pipeline.md": [("pipeline",), ("demo",)],
    "score.md": [("score",)],
    "serve.md": [("serve",)],
}
# Inline code that starts with one of these is another tool's command line, not fer-ray's.
OTHER_TOOLS = {"ray", "kubectl", "docker", "aws", "curl", "serve", "pip", "pytest", "make", "openssl", "git"}

FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```[^\n]*$", re.M | re.S)  # indented: inside a list
INLINE = re.compile(r"`([^`]+)`")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHELL_OPERATORS = {"&", "&&", "|", "||", ";"}
JOB = re.compile(r"(?:^|/)jobs/(\w+)\.py$")


def _run_parser(argv: list[str]) -> tuple[int, str]:
    """(exit status, stdout + stderr) of parsing argv; 0 and "" when it parses."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            parse_args(argv)
        except SystemExit as exc:
            return exc.code or 0, out.getvalue()
    return 0, out.getvalue()


@functools.lru_cache(maxsize=None)
def _help(stage: tuple[str, ...]) -> str | None:
    """The --help text of a stage (e.g. ("sweep", "svm")), or None when there is no such stage."""
    status, text = _run_parser([*stage, "--help"])
    return text if status == 0 else None


def _flags(stages) -> set[str]:
    flags = set()
    for stage in stages:
        text = _help(tuple(stage))
        assert text is not None, f"no stage {' '.join(stage)!r}"
        flags |= set(FLAG.findall(text))
    return flags


def _stage_words(words: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """Split `fer-ray sweep svm --catalog c` (or `python jobs/sweep.py svm ...`, or `train
    --workers 2`) into the stage and its arguments; the stage is () when words name none."""
    for i, word in enumerate(words):
        if word == "fer-ray" or word.endswith("/fer-ray"):
            rest = words[i + 1:]
            break
        job = JOB.search(word)
        if job:
            rest = [job.group(1), *words[i + 1:]]
            break
    else:
        rest = words
    stage: list[str] = []
    for word in rest:
        if not re.fullmatch(r"[a-z]+", word) or _help((*stage, word)) is None:
            break
        stage.append(word)
    return tuple(stage), rest[len(stage):]


def _inline_spans(text: str):
    return INLINE.findall(FENCE.sub("", text))


def _command_lines(text: str):
    """Lines of shell code blocks, and inline code that is a whole command (`fer-ray STAGE --flag ...`,
    as in the README's table of stages)."""
    for lang, body in FENCE.findall(text):
        if lang in ("bash", "sh", "shell", "console"):
            yield from body.replace("\\\n", " ").splitlines()
    for span in _inline_spans(text):
        words = span.split()
        if words[0] in ("fer-ray", ".venv/bin/fer-ray") and _stage_words(words)[0] and FLAG.search(span):
            yield span


def _commands():
    """(page, command line, argv) for every fer-ray or jobs/*.py command the pages show."""
    for page in PAGES:
        for line in _command_lines(page.read_text()):
            if not re.search(r"(?:^|[\s/])fer-ray\s|jobs/\w+\.py", line):
                continue
            words = shlex.split(line, comments=True)
            ends = [i for i, w in enumerate(words) if w in SHELL_OPERATORS or w.startswith((">", "2>"))]
            words = words[:ends[0]] if ends else words  # `... &`, `... > log`: the command ends there
            if not any(w == "fer-ray" or w.endswith("/fer-ray") or JOB.search(w) for w in words):
                continue  # e.g. a path such as /tmp/fer-ray-smoke
            stage, args = _stage_words(words)
            if "..." in args:
                continue  # an elided example (`jobs/pipeline.py ...`)
            yield page.relative_to(ROOT).as_posix(), line.strip(), [*stage, *args]


COMMANDS = list(_commands())


def test_the_docs_hold_commands_for_every_stage():
    """Guards the extraction itself: a page layout it cannot read would otherwise pass silently."""
    assert len(COMMANDS) >= 30, COMMANDS
    named = {argv[0] for _, _, argv in COMMANDS}
    assert {"prepare", "train", "evaluate", "baseline", "sweep", "ensemble", "pipeline", "demo",
            "score", "serve"} <= named, named


@pytest.mark.parametrize("page,line,argv", COMMANDS, ids=[f"{p}:{' '.join(a)[:70]}" for p, _, a in COMMANDS])
def test_documented_command_parses(page, line, argv, tmp_path):
    argv = list(argv)
    if "--config" in argv:  # the YAML it names is an example: an empty one keeps every flag's default
        empty = tmp_path / "empty.yaml"
        empty.write_text("")
        argv[argv.index("--config") + 1] = str(empty)
    status, output = _run_parser(argv)
    assert status == 0, f"{page}: `{line}` does not parse:\n{output}"
    stage, args = _stage_words(argv)
    spelled = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert spelled <= _flags([stage]), f"{page}: `{line}` abbreviates or misspells {spelled - _flags([stage])}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_flags_named_in_the_text_exist(page):
    own = STAGE_PAGES.get(page.name)
    allowed = _flags(own) if own else _flags(s for stages in STAGE_PAGES.values() for s in stages)
    unknown = []
    for span in _inline_spans(page.read_text()):
        words = span.split()
        flags = FLAG.findall(span)
        if not flags or words[0] in OTHER_TOOLS:
            continue
        stage, _ = _stage_words(words)
        known = _flags([stage]) if stage else allowed
        unknown += [f"{flag} (in `{span}`)" for flag in flags if flag not in known]
    assert not unknown, f"{page.name} names flags the CLI does not have: {unknown}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", FENCE.sub("", file.read_text()), re.M)}
            if anchor not in anchors:
                broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_readme_stays_a_guide():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; reference material goes in docs/"
