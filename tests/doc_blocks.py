"""The code blocks of the documentation, as tests/test_docs.py runs them.

The documents are README.md and docs/*.md (docs/redirect.1 is generated from
the parser and tested by test_cli). A code block is a fenced block (```) or an
indented one (four spaces, after a blank line, as Markdown has it: chunks
separated only by blank lines are one block). Each block has a stable key: its
first line (without a comment after two spaces), or, where two blocks of one
file begin alike, that and the first line that tells them apart
("[Unit] … Description=app's sockets").

SUBSTITUTIONS is every change a test makes to a block's text before it runs
it, in one place.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")))


@dataclass(frozen=True)
class Block:
    file: str    # relative to the repository
    line: int    # the line of the block's first text line (1-based)
    info: str    # a fenced block's info string ("sh"); "" for an indented block
    text: str    # the block's text, de-indented, without a trailing newline
    key: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:  # pytest ids
        return f"{self.file}:{self.key[:40]}"


def _raw_blocks(file: str) -> list[Block]:
    lines = (REPO / file).read_text().split("\n")
    found, i, after_blank = [], 0, True
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(`{3,})(.*)$", line)
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1))), None)
            if end is None:
                raise ValueError(f"{file}:{i + 1}: a code fence that is never closed")
            found.append(Block(file, i + 2, fence.group(2).strip(), "\n".join(lines[i + 1:end])))
            i, after_blank = end + 1, False
            continue
        if after_blank and line.startswith("    ") and line.strip():
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            while not lines[end - 1].strip():
                end -= 1
            found.append(Block(file, i + 1, "", "\n".join(l[4:] for l in lines[i:end])))
            i, after_blank = end, False
            continue
        after_blank = not line.strip()
        i += 1
    return found


def _keyed(blocks: list[Block]) -> list[Block]:
    keyed = []
    for block in blocks:
        lines = block.text.split("\n")
        alike = [b.text.split("\n") for b in blocks if b is not block and b.text.split("\n")[0] == lines[0]]
        key = _uncommented(lines[0])
        if alike:
            k = next((k for k in range(1, len(lines)) if all(o[:k + 1] != lines[:k + 1] for o in alike)), None)
            if k is None:
                raise ValueError(f"{block.where}: two blocks of one file with the same text")
            key = f"{key} … {_uncommented(lines[k])}"
        keyed.append(Block(block.file, block.line, block.info, block.text, key))
    return keyed


def _uncommented(line: str) -> str:
    return re.sub(r"\s{2,}#.*$", "", line).strip()


def all_blocks() -> list[Block]:
    return [b for file in DOCS for b in _keyed(_raw_blocks(file))]


def block(file: str, key: str) -> Block:
    found = [b for b in all_blocks() if (b.file, b.key) == (file, key)]
    if not found:
        raise LookupError(f"{file} has no code block with the key {key!r}")
    return found[0]


# ---- substitutions ------------------------------------------------------------------------

# Every change a test makes to a block's text, in one place: name -> (regular
# expression, replacement). A test names the ones it applies, with the values
# of the {placeholders}; each must change something (a block that lost the text
# fails instead of running unchanged). Everything else runs as written, with:
# - in the working directory, `./NAME` of PROGRAMS: the fixture programs
#   (fixtures/static-bins);
# - on PATH, `redirect` as README's pipx line installed it in
#   {machine}/usr/local/bin, and `pytest` of the suite's venv;
# - TMPDIR a directory of the test's own.
PROGRAMS = {"server": "go-http-server", "client": "go-http-client", "udp-server": "go-udp-server",
            "udp-client": "go-udp-client", "go-http-server": "go-http-server", "go-http-client": "go-http-client"}
SUBSTITUTIONS = {
    # The machine's directories: the test's own.
    "/run": (r"(?<![\w/.])/run/", "{root}/run/"),
    "/opt/pipx": (r"(?<![\w/.])/opt/pipx\b", "{machine}/opt/pipx"),
    # /usr/local/bin: README's pipx install (redirect), and the service the
    # docs run as /usr/local/bin/app: the static Go HTTP server, copied there.
    "/usr/local/bin": (r"(?<![\w/.])/usr/local/bin\b", "{machine}/usr/local/bin"),
    # Docker: the backend image's program (/app), the same Go server.
    "/app": (r"(?<=-- )/app\b", "{machine}/usr/local/bin/app"),
    # The service user `app` of the docs: a user the tests make for it (in
    # commands, units, and `ls -l`'s "srw-rw---- app www-data").
    "user app": (r"(?<=-u )app\b|(?<=-o )app\b|(?<=www-data )app\b|(?<=---- )app\b"
                 r"|(?m:(?<=^User=)app$)|(?m:(?<=^Group=)app$)", "{user}"),
    # A client shown without arguments (README: a PostgreSQL client): the Go
    # HTTP client needs the URL of the address its rule names.
    "./client URL": (r"(?m)(?<=-- \./client)$", " http://{address}/"),
    # A TCP port a socket unit listens on: a free one.
    "127.0.0.1:9100": (r"\b127\.0\.0\.1:9100\b", "127.0.0.1:{port}"),
}


def substitute(text: str, names: list[str], **values) -> str:
    for name in names:
        pattern, replacement = SUBSTITUTIONS[name]
        text, count = re.subn(pattern, lambda m: replacement.format(**values), text)
        assert count, f"substitution {name!r} changes nothing in:\n{text}"
    return text


# ---- reading a block ------------------------------------------------------------------------

def commands(text: str) -> list[str]:
    """A shell block's commands: lines joined where they end in a backslash;
    blank lines and comment lines left out (a comment after a command stays:
    the shell ignores it)."""
    result, current = [], ""
    for line in text.split("\n"):
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line
        if line.endswith("\\"):
            current = current[:-1] + " "
            continue
        result.append(current.strip())
        current = ""
    assert not current, f"a command that continues past the block: {current!r}"
    return result


def session(text: str) -> list[tuple[str, list[str]]]:
    """A block written as a terminal session: `$ COMMAND` lines, each followed
    by the output it shows (maybe none)."""
    shown: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        if line.startswith("$ "):
            shown.append((line[2:], []))
        elif shown:
            shown[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"output before any $ command: {line!r}")
    return [(command, [l for l in output if l.strip()]) for command, output in shown]


def before_session(text: str) -> str:
    """The part of a block above its first `$ ` line (a file, then the command that uses it)."""
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line.startswith("$ ")), len(lines))
    return "\n".join(lines[:first]).rstrip()


def rules_of(text: str) -> list[str]:
    """The rules of a rule block: blank lines and `#` lines left out, as in a
    rule file, and a comment after a rule too (the docs explain rules so; a rule
    file does not allow it: test_docs writes only blocks without them to files)."""
    rules = []
    for line in text.split("\n"):
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            rules.append(line)
    return rules


def unit_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: section -> [(key, value)] in order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), [])
            continue
        key, sep, value = line.partition("=")
        if current is None or not sep:
            raise AssertionError(f"line {number} of a unit is neither a section nor key=value: {line!r}")
        current.append((key.strip(), value.strip()))
    return sections
