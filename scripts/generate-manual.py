#!/usr/bin/env python3
"""Write redirect(1) and the bash and zsh completions from the command's own
parser (argparse-manpage, shtab), so they cannot drift from it:

    .venv/bin/python scripts/generate-manual.py          # writes docs/redirect.1, completion/redirect (bash), completion/_redirect (zsh)
    .venv/bin/python scripts/generate-manual.py --check  # exit 1 if they differ from the parser

tests/test_cli.py runs --check. The wheel installs them under share/ (man1,
bash-completion, zsh site-functions): pyproject.toml's data-files."""
from __future__ import annotations

import sys
from pathlib import Path

import shtab
from argparse_manpage.manpage import Manpage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redirect import __version__  # noqa: E402
from redirect.cli import _parser  # noqa: E402

OUTPUTS = {"docs/redirect.1": "man", "completion/redirect": "bash", "completion/_redirect": "zsh"}


def generate(kind: str) -> str:
    parser = _parser()
    if kind == "man":
        # The date is the version's, not today's: the page changes when redirect does.
        return str(Manpage(parser, _data={"project_name": "redirect", "version": __version__, "date": __version__,
                                          "description": "run a program with its IP sockets turned into Unix "
                                                         "domain sockets, by rules"}))
    return shtab.complete(parser, shell=kind)


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    stale = []
    for name, kind in OUTPUTS.items():
        text, path = generate(kind), ROOT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"generate-manual: {', '.join(stale)} differ from the parser: run scripts/generate-manual.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
