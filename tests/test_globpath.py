"""Tests for redirect.rules.globpath, the globs of from-unix= and from-abstract=."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redirect.rules.globpath import glob_match


@pytest.mark.parametrize("pattern,name", [
    ("/run/app.sock", "/run/app.sock"),
    ("/run/*.sock", "/run/app.sock"),
    ("/run/*", "/run/"),                 # '*' matches the empty string
    ("/run/a?p.sock", "/run/app.sock"),
    ("/run/[a-c]pp.sock", "/run/bpp.sock"),
    ("/run/[!x]pp.sock", "/run/app.sock"),
    ("/run/[]]", "/run/]"),              # ']' first in a class is literal
    ("/run/[!]]", "/run/a"),
    ("/run/[a-]", "/run/-"),             # '-' last is literal
    ("/run/[-a]", "/run/-"),
    ("/run/[\\]-a]", "/run/_"),          # escaped range start
    ("/run/[Z-\\\\]", "/run/\\"),        # escaped range end
    ("/run/\\*", "/run/*"),
    ("/run/\\?\\[", "/run/?["),
    ("/run/a\\", "/run/a\\"),            # a trailing backslash is literal
    ("/run/[ab", "/run/[ab"),            # unterminated class: literal '['
    ("/x/[a/b]", "/x/[a/b]"),            # a class cannot hold '/': literal
    ("/**/app.sock", "/app.sock"),
    ("/**/app.sock", "/a/b/c/app.sock"),
    ("**/app.sock", "/a/app.sock"),
    ("/a/**", "/a/b/c"),
    ("/a/**", "/a/"),
    ("/a/**/**/b", "/a/b"),
    ("/a/**/b/**/c", "/a/x/b/y/z/c"),
    ("*.sock", "/deep/dir/app.sock"),    # no '/' in pattern: basename only
    ("app.sock", "/run/app.sock"),
    ("*", "/run/x"),
    ("foo", "foo"),
    ("?", "\n"),                         # any character but '/'
])
def test_glob_matches(pattern, name):
    assert glob_match(pattern, name)


@pytest.mark.parametrize("pattern,name", [
    ("/run/*.sock", "/run/sub/app.sock"),  # '*' stays in its component
    ("/run/?", "/run/ab"),
    ("/a?b", "/a/b"),                      # '?' never matches '/'
    ("/run/[a-c]", "/run/d"),
    ("/run/[c-a]", "/run/b"),              # a reversed range is empty
    ("/run/[!a-c]", "/run/b"),
    ("/run/[!]]", "/run/]"),
    ("/run/[a-]", "/run/b"),
    ("/run/[\\]-a]", "/run/\\"),
    ("/run/\\*", "/run/x"),
    ("/a/**b/c", "/a/x/y/b/c"),            # '**' not alone acts as '*'
    ("/a/b**/c", "/a/x/c"),
    ("/a/***/c", "/a/x/y/c"),
    ("/a/**", "/a"),
    ("/run/[ab", "/run/a"),
    ("/x[/]y", "/x/y"),
    ("app.sock", "/run/app.sock.old"),
    ("/run/app.sock", "run/app.sock"),     # a pattern with '/' is anchored
    ("*.sock", "/run/app.sock/"),          # basename of "dir/" is empty
    ("[!a]", "/"),
])
def test_glob_does_not_match(pattern, name):
    assert not glob_match(pattern, name)


@given(st.text(max_size=30), st.text(max_size=30))
def test_glob_match_never_raises(pattern, name):
    assert glob_match(pattern, name) in (True, False)


_segment = st.text(st.characters(blacklist_characters="/*?[\\", blacklist_categories=("Cs",)),
                   min_size=1, max_size=8)


@given(st.lists(_segment, min_size=1, max_size=5))
def test_glob_literal_path_matches_itself_only(parts):
    path = "/" + "/".join(parts)
    assert glob_match(path, path)
    assert not glob_match(path, path + "x")
    # '**' spans any number of leading components.
    assert glob_match("/**/" + parts[-1], path)
