"""The README's fenced code blocks as a test runs them: shell blocks split into commands exactly as
printed, ``console`` blocks into commands and the output the README prints after each, and that
output turned into a pattern the real output is matched against.

Languages: ``console`` (``$ command`` lines, then what the terminal shows), ``sh`` (commands only)
and ``text`` (not commands: a layout, a table). A block that is not to be run carries, on the last
non-blank line above its fence, ``<!-- not run by tests: the reason -->``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

SHELL_LANGUAGES = ("sh", "console")
PROSE_LANGUAGES = ("text",)
EXCLUDED = re.compile(r"<!--\s*not run by tests:\s*(?P<reason>.+?)\s*-->")
FENCE = re.compile(r"^```(?P<language>\S*)\s*$")
HEADING = re.compile(r"^#+\s+(?P<title>.+?)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    text: str  # the lines between the fences, each ending in a newline
    section: str  # the nearest heading above
    excluded: str | None  # the reason of a "not run by tests" marker just above, if any

    def where(self) -> str:
        return f"README.md:{self.line} ({self.section!r}, ```{self.language})"


@dataclass(frozen=True)
class Command:
    line: int  # 1-based README line of its first line
    text: str  # as printed (prompt removed), continuation lines and trailing comment included
    output: str = ""  # console blocks: what the README prints after it


def blocks(markdown: str) -> list[Block]:
    found: list[Block] = []
    lines = markdown.splitlines()
    section, index = "", 0
    while index < len(lines):
        line = lines[index]
        heading = HEADING.match(line)
        if heading:
            section = heading["title"]
        fence = FENCE.match(line)
        if not fence:
            index += 1
            continue
        end = next((j for j in range(index + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md:{index + 1}: the fence is never closed")
        above = next((lines[j] for j in range(index - 1, -1, -1) if lines[j].strip()), "")
        marker = EXCLUDED.search(above)
        text = "".join(f"{body}\n" for body in lines[index + 1 : end])
        found.append(Block(index + 1, fence["language"], text, section, marker["reason"] if marker else None))
        index = end + 1
    return found


def _complete(command: str) -> bool:
    """Whether bash would run ``command`` as it stands: no open quote, no trailing backslash."""
    try:
        shlex.split(command, comments=True)
    except ValueError:  # "No closing quotation" or "No escaped character" (a final backslash)
        return False
    return True


def _split(block: Block, prompt: str) -> list[tuple[int, list[str], list[str]]]:
    """(line, command lines, output lines) in order; with ``prompt`` every command starts with it."""
    lines = block.text.splitlines()
    commands: list[tuple[int, list[str], list[str]]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip() or (not prompt and line.lstrip().startswith("#")):
            if commands and prompt:
                commands[-1][2].append(line)
            index += 1
            continue
        if prompt and not line.startswith(prompt):
            if not commands:
                raise ValueError(f"{block.where()}: output before any {prompt!r} command: {line!r}")
            commands[-1][2].append(line)
            index += 1
            continue
        start = index
        text = [line.removeprefix(prompt)]
        while not _complete("\n".join(text)):
            index += 1
            if index == len(lines):
                raise ValueError(f"README.md:{block.line + 1 + start}: the command never ends")
            text.append(lines[index])
        commands.append((block.line + 1 + start, text, []))
        index += 1
    return commands


def shell_commands(block: Block) -> list[Command]:
    """An ``sh`` block's commands (a command's continuation lines belong to it; comment lines and
    blank lines are not commands)."""
    return [Command(line, "\n".join(text)) for line, text, _ in _split(block, prompt="")]


def console_commands(block: Block) -> list[Command]:
    """A ``console`` block's ``$ `` commands, each with the output printed after it."""
    return [
        Command(line, "\n".join(text), "\n".join(output).rstrip()) for line, text, output in _split(block, prompt="$ ")
    ]


# --- what the README prints against what ran --------------------------------------------------------

# The parts of a printed output that differ from run to run, each with what it stands for.
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")  # created_at: when it was stored
ELISION = "[...]"  # the README leaves out what is between the brackets
PID = re.compile(r"\(pid \d+\b")  # a process id printed by ./manage_all.sh
# A terminal's formatting, not text: SGR (curl's bold header names) and OSC 8 hyperlinks (curl's Location).
TERMINAL_FORMATTING = re.compile(r"\x1b\[[0-9;]*m|\x1b\]8;[^\x1b\x07]*(?:\x1b\\|\x07)")


@dataclass
class OutputMatcher:
    """Matches real outputs to the README's, across one session: a timestamp printed twice in the
    README must be one timestamp in the real outputs too (the same order read back)."""

    timestamps: dict[str, str] = field(default_factory=dict)  # README's value -> the real one

    def mismatch(self, expected: str, actual: str) -> str | None:
        """Why ``actual`` is not what the README prints as ``expected``; None when it is.

        Normalised: a terminal shows its formatting (bold, hyperlinks) as such, not as text, and
        CR LF line ends (the terminal's, and curl's header lines: CR CR LF there) as line ends; trailing
        whitespace (the README ends an output with a newline or a blank line where curl prints a
        body without one); after an HTTP status line, the README prints the headers that matter and
        each must be there with that value, the others are not printed; within a line, ``[...]``
        stands for any text, a created_at-style timestamp for any timestamp, ``(pid N`` for any pid."""
        actual = re.sub(r"\r+\n", "\n", TERMINAL_FORMATTING.sub("", actual)).rstrip()
        expected = expected.rstrip()
        if expected.startswith("HTTP/"):
            expected_head, _, expected = expected.partition("\n\n")
            actual_head, _, actual = actual.partition("\n\n")
            problem = _head_mismatch(expected_head, actual_head)
            if problem:
                return problem
        pattern, readme_timestamps = _pattern(expected)
        found = re.fullmatch(pattern, actual, flags=re.DOTALL)
        if not found:
            return f"printed:\n{expected}\nreal:\n{actual}"
        for readme_value, real_value in zip(readme_timestamps, found.groups(), strict=True):
            known = self.timestamps.setdefault(readme_value, real_value)
            if known != real_value:
                return f"the README prints {readme_value} for both {known} and {real_value}"
        return None


def _head_mismatch(expected: str, actual: str) -> str | None:
    expected_status, *expected_headers = expected.splitlines()
    actual_status, *actual_headers = actual.splitlines()
    if expected_status != actual_status:
        return f"status line: printed {expected_status!r}, real {actual_status!r}"
    real = {}
    for header in actual_headers:
        name, _, value = header.partition(":")
        real[name.strip().lower()] = value.strip()
    for header in expected_headers:
        name, _, value = header.partition(":")
        if real.get(name.strip().lower()) != value.strip():
            return f"header {header!r} printed, real headers:\n{actual}"
    return None


def _pattern(expected: str) -> tuple[str, list[str]]:
    """A regular expression for ``expected`` (its variable parts as groups) and the README's
    timestamps in the order of the groups."""
    timestamps: list[str] = []
    parts: list[str] = []
    position = 0
    variable = re.compile(rf"{TIMESTAMP.pattern}|{re.escape(ELISION)}|{PID.pattern}")
    for found in variable.finditer(expected):
        parts.append(re.escape(expected[position : found.start()]))
        text = found.group()
        if text == ELISION:
            parts.append(r"\[[^\n]*?\]")
        elif text.startswith("(pid"):
            parts.append(r"\(pid \d+")
        else:
            timestamps.append(text)
            parts.append(f"({TIMESTAMP.pattern})")
        position = found.end()
    parts.append(re.escape(expected[position:]))
    return "".join(parts), timestamps
