"""Tests for redirect.rules: parsing, errors, matching, placeholders, printing (globs: test_globpath.py)."""

from __future__ import annotations

import errno
import grp
import ipaddress
import os
import pickle
import pwd

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from redirect.rules import (
    SUN_PATH_MAX,
    Rule,
    RuleError,
    SocketFacts,
    describe,
    expand,
    first_match,
    format_rule,
    parse_rule,
    parse_rule_file,
)

CWD = "/home/user"
IP4 = ipaddress.IPv4Address
IP6 = ipaddress.IPv6Address


def parse(text: str) -> Rule:
    return parse_rule(text, cwd=CWD)


def error(text: str, **kwargs) -> RuleError:
    kwargs.setdefault("cwd", CWD)
    with pytest.raises(RuleError) as info:
        parse_rule(text, **kwargs)
    return info.value


def ip(direction="in", socket_type="stream", address="127.0.0.1", port=80):
    return SocketFacts(direction, socket_type,
                       None if address is None else ipaddress.ip_address(address),
                       port)


def unix(path, direction="out", socket_type="stream"):
    return SocketFacts(direction, socket_type, unix_path=path)


def abstract(name, direction="out", socket_type="stream"):
    return SocketFacts(direction, socket_type, abstract=name)


# --------------------------------------------------------------------------
# Parsing: flags, matches, override order


def test_minimal_rule_defaults():
    rule = parse("path=/run/x.sock")
    assert rule == Rule(direction=None, socket_type=None, address=None,
                        port=None, from_unix=None, from_abstract=None,
                        action="path", target="/run/x.sock", errno=None,
                        text="path=/run/x.sock")


@pytest.mark.parametrize("word,expected", [("in", "in"), ("out", "out")])
def test_direction_flags(word, expected):
    assert parse(f"{word},ignore").direction == expected


@pytest.mark.parametrize("word,expected", [
    ("tcp", "stream"), ("stream", "stream"),
    ("udp", "dgram"), ("dgram", "dgram"), ("datagram", "dgram"),
])
def test_type_flags_and_aliases(word, expected):
    assert parse(f"{word},ignore").socket_type == expected


@pytest.mark.parametrize("text,field,expected", [
    ("tcp,udp,ignore", "socket_type", "dgram"),
    ("udp,tcp,ignore", "socket_type", "stream"),
    ("datagram,stream,ignore", "socket_type", "stream"),
    ("in,out,ignore", "direction", "out"),
    ("out,in,ignore", "direction", "in"),
    ("addr=1.2.3.4,addr=::1,ignore", "address", IP6("::1")),
    ("port=1,port=2-3,ignore", "port", (2, 3)),
    ("from-unix=/a,from-unix=/b,ignore", "from_unix", "/b"),
    ("mode=0600,mode=0660,path=/a", "mode", 0o660),
])
def test_later_items_override_earlier(text, field, expected):
    assert getattr(parse(text), field) == expected


def test_address_forms():
    assert parse("addr=127.0.0.1,ignore").address == IP4("127.0.0.1")
    assert parse("address=127.0.0.1,ignore").address == IP4("127.0.0.1")
    assert parse("addr=0:0:0:0:0:0:0:1,ignore").address == IP6("::1")
    # The IPv4-mapped form is stored as plain IPv4.
    assert parse("addr=::ffff:10.0.0.1,ignore").address == IP4("10.0.0.1")
    assert parse("addr=::FFFF:a00:1,ignore").address == IP4("10.0.0.1")


def test_port_forms():
    assert parse("port=80,ignore").port == (80, 80)
    assert parse("port=0,ignore").port == (0, 0)
    assert parse("port=65535,ignore").port == (65535, 65535)
    assert parse("port=0080,ignore").port == (80, 80)  # leading zeros, as ip2unix
    assert parse("port=1000-2000,ignore").port == (1000, 2000)
    assert parse("port=0-65535,ignore").port == (0, 65535)


def test_from_unix_and_from_abstract_values():
    rule = parse("from-unix=/run/*.sock,path=/tmp/x")
    assert rule.from_unix == "/run/*.sock" and rule.address is None
    rule = parse("from-abstract=foo[0-9],abstract=bar")
    assert rule.from_abstract == "foo[0-9]"


# --------------------------------------------------------------------------
# Actions and flags


def test_path_absolute_kept():
    assert parse("path=/run/app/http.sock").target == "/run/app/http.sock"


def test_path_relative_made_absolute_against_cwd():
    assert parse("path=app.sock").target == "/home/user/app.sock"
    assert parse_rule("path=sub/%p.sock", cwd="/srv").target == "/srv/sub/%p.sock"


def test_path_relative_uses_getcwd_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_rule("path=x.sock").target == os.path.join(os.getcwd(), "x.sock")


def test_percent_in_cwd_is_not_a_placeholder():
    rule = parse_rule("path=%p.sock", cwd="/srv/100%")
    assert rule.target == "/srv/100%%/%p.sock"
    assert expand(rule.target, port=80, address="::1",
                  socket_type="stream") == "/srv/100%/80.sock"


def test_abstract_action():
    rule = parse("abstract=app-%p")
    assert (rule.action, rule.target) == ("abstract", "app-%p")


def test_systemd_action():
    assert (parse("in,systemd").action, parse("in,systemd").target) == ("systemd", None)
    rule = parse("in,systemd=http-socket")
    assert (rule.action, rule.target) == ("systemd", "http-socket")
    assert parse("systemd").direction is None  # both: fine, binds use it


@pytest.mark.parametrize("text,code", [
    ("reject", errno.EACCES),
    ("reject=EPERM", errno.EPERM),
    ("reject=eperm", errno.EPERM),
    ("reject=EAddrInUse", errno.EADDRINUSE),
    ("reject=EWOULDBLOCK", errno.EAGAIN),  # aliases are known too
    ("reject=13", 13),
    ("reject=0111", 111),
    ("reject=4095", 4095),
])
def test_reject_action(text, code):
    rule = parse(text)
    assert (rule.action, rule.errno, rule.target) == ("reject", code, None)


def test_blackhole_and_ignore():
    assert parse("in,blackhole").action == "blackhole"
    assert parse("out,in,blackhole").action == "blackhole"  # last direction counts
    rule = parse("ignore")
    assert (rule.action, rule.target, rule.errno) == ("ignore", None, None)


def test_non_reject_actions_have_no_errno():
    for text in ("path=/a", "abstract=a", "systemd", "in,blackhole", "ignore"):
        assert parse(text).errno is None


def test_noremove_mode_owner_group():
    rule = parse("path=/a,noremove,mode=0660,owner=0,group=0")
    assert rule.noremove and rule.mode == 0o660
    assert (rule.owner, rule.group) == (0, 0)
    assert parse("path=/a,mode=7777").mode == 0o7777
    assert parse("path=/a,mode=0").mode == 0
    assert parse("path=/a").noremove is False


def test_owner_and_group_by_name():
    user = pwd.getpwuid(0).pw_name
    group = grp.getgrgid(0).gr_name
    rule = parse(f"path=/a,owner={user},group={group}")
    assert (rule.owner, rule.group) == (0, 0)
    assert parse("path=/a,owner=4294967294").owner == 2**32 - 2


# --------------------------------------------------------------------------
# Escapes


@pytest.mark.parametrize("text,target", [
    (r"path=/a\,b", "/a,b"),
    (r"path=/a\\b", "/a\\b"),
    (r"path=/a\xb", "/a\\xb"),          # other \X stays two characters
    (r"path=/end\\", "/end\\"),
    (r"path=/%a\,\\", "/%a,\\"),
    (r"path=/foo\\\,", "/foo\\,"),
    (r"path=/x\\\\y", "/x\\\\y"),
    ("path=/a=b", "/a=b"),              # only the first '=' separates
    ("path=/trailing\\", "/trailing\\"),  # a lone backslash at the end
])
def test_value_escapes(text, target):
    assert parse(text).target == target


def test_escaped_comma_then_real_comma():
    rule = parse(r"path=/iii\,,out")
    assert (rule.target, rule.direction) == ("/iii,", "out")


def test_escaped_backslash_ends_before_comma():
    err = error(r"path=/a\\,xxx")
    assert err.position == 10 and "unknown item 'xxx'" in err.reason


def test_glob_escapes_survive_value_unescaping():
    rule = parse(r"from-unix=/run/a\*b,ignore")
    assert rule.from_unix == r"/run/a\*b"
    assert rule.matches(unix("/run/a*b"))
    assert not rule.matches(unix("/run/axb"))


# --------------------------------------------------------------------------
# Placeholders


def test_expand_every_placeholder():
    assert expand("/s/%t-%a-%p.sock", port=8080, address="127.0.0.1",
                  socket_type="stream") == "/s/tcp-127.0.0.1-8080.sock"
    assert expand("%t", port=1, address="::1", socket_type="dgram") == "udp"
    assert expand("100%%-%a", port=1, address="::1",
                  socket_type="stream") == "100%-::1"
    assert expand("plain", port=1, address="x", socket_type="dgram") == "plain"


@pytest.mark.parametrize("kind,shown", [
    ("stream", "tcp"), ("dgram", "udp"), ("tcp", "tcp"), ("udp", "udp"),
])
def test_expand_type_accepts_both_spellings(kind, shown):
    assert expand("%t", port=1, address="::1", socket_type=kind) == shown


def test_expand_rejects_unknown_placeholder():
    with pytest.raises(RuleError) as info:
        expand("/a%x", port=1, address="::1", socket_type="stream")
    assert info.value.position == 2


@pytest.mark.parametrize("text", ["path=/a/%p/%a/%t/%%", "abstract=%%%p"])
def test_valid_templates_parse(text):
    assert parse(text).target == text.split("=", 1)[1]


@pytest.mark.parametrize("text,pos,phrase", [
    ("path=/run/%x.sock", 10, "unknown placeholder %x"),
    ("abstract=a%", 10, "lone '%'"),
    ("path=/a%%%b", 9, "unknown placeholder %b"),
    (r"path=/a\,%q", 9, "unknown placeholder %q"),  # position past an escape
])
def test_bad_placeholders(text, pos, phrase):
    err = error(text)
    assert err.position == pos and phrase in err.reason


# --------------------------------------------------------------------------
# Matching


def test_direction_matching():
    assert parse("in,ignore").matches(ip(direction="in"))
    assert not parse("in,ignore").matches(ip(direction="out"))
    assert parse("out,ignore").matches(ip(direction="out"))
    assert parse("ignore").matches(ip(direction="in"))
    assert parse("ignore").matches(ip(direction="out"))


def test_type_matching():
    assert parse("tcp,ignore").matches(ip(socket_type="stream"))
    assert not parse("tcp,ignore").matches(ip(socket_type="dgram"))
    assert parse("datagram,ignore").matches(ip(socket_type="dgram"))
    assert parse("ignore").matches(ip(socket_type="dgram"))


def test_address_compared_by_value():
    rule = parse("addr=::1,ignore")
    assert rule.matches(ip(address="0:0:0:0:0:0:0:1"))
    assert rule.matches(ip(address="::1"))
    assert not rule.matches(ip(address="::2"))
    assert not rule.matches(ip(address="127.0.0.1"))
    assert not rule.matches(ip(address=None))


def test_mapped_ipv4_equals_plain_ipv4_both_ways():
    plain = parse("addr=127.0.0.1,ignore")
    mapped = parse("addr=::ffff:127.0.0.1,ignore")
    for rule in (plain, mapped):
        assert rule.matches(ip(address="127.0.0.1"))
        assert rule.matches(ip(address="::ffff:127.0.0.1"))
        assert not rule.matches(ip(address="127.0.0.2"))
        assert not rule.matches(ip(address="::ffff:127.0.0.2"))


def test_wildcard_addresses_are_distinct():
    assert not parse("addr=0.0.0.0,ignore").matches(ip(address="::"))
    assert not parse("addr=::,ignore").matches(ip(address="0.0.0.0"))
    assert parse("addr=::,ignore").matches(ip(address="::"))


def test_socket_side_string_and_zone_are_tolerated():
    rule = parse("addr=fe80::1,ignore")
    sock = SocketFacts("in", "stream", ipaddress.ip_address("fe80::1%2"), 80)
    assert rule.matches(sock)
    assert rule.matches(SocketFacts("in", "stream", "fe80::1", 80))  # type: ignore[arg-type]
    assert not rule.matches(SocketFacts("in", "stream", "junk", 80))  # type: ignore[arg-type]


@pytest.mark.parametrize("port,hit", [
    (999, False), (1000, True), (1500, True), (2000, True), (2001, False),
])
def test_port_range_boundaries(port, hit):
    assert parse("port=1000-2000,ignore").matches(ip(port=port)) is hit


def test_single_port_and_missing_port():
    rule = parse("port=80,ignore")
    assert rule.matches(ip(port=80))
    assert not rule.matches(ip(port=81))
    assert not rule.matches(ip(port=None))
    assert parse("port=0,ignore").matches(ip(port=0))
    assert parse("port=65535,ignore").matches(ip(port=65535))


def test_ip_rule_never_matches_unix_sockets():
    catch_all = parse("path=/tmp/x")
    assert catch_all.matches(ip())
    assert not catch_all.matches(unix("/run/other.sock"))
    assert not catch_all.matches(abstract("other"))


def test_from_unix_matches_only_paths():
    rule = parse("from-unix=/run/*.sock,path=/tmp/x")
    assert rule.matches(unix("/run/a.sock"))
    assert not rule.matches(unix("/run/sub/a.sock"))
    assert not rule.matches(abstract("/run/a.sock"))
    assert not rule.matches(ip())


def test_from_abstract_matches_only_abstract_names():
    rule = parse("from-abstract=foob[a-c]r,abstract=x")
    assert rule.matches(abstract("foobar"))
    assert not rule.matches(abstract("foodar"))
    assert not rule.matches(unix("foobar"))
    assert not rule.matches(ip())


def test_from_unix_still_checks_direction_and_type():
    rule = parse("in,udp,from-unix=/a,ignore")
    assert rule.matches(unix("/a", direction="in", socket_type="dgram"))
    assert not rule.matches(unix("/a", direction="out", socket_type="dgram"))
    assert not rule.matches(unix("/a", direction="in", socket_type="stream"))


def test_first_match_wins():
    rules = [parse("in,port=80,path=/a"), parse("in,path=/b"), parse("ignore")]
    assert first_match(rules, ip(port=80)) is rules[0]
    assert first_match(rules, ip(port=81)) is rules[1]
    assert first_match(rules, ip(direction="out")) is rules[2]
    assert first_match(rules[:2], ip(direction="out")) is None
    assert first_match([], ip()) is None


# --------------------------------------------------------------------------
# Globs




# --------------------------------------------------------------------------
# Errors and their positions


@pytest.mark.parametrize("text,pos,phrase", [
    ("", 0, "empty rule"),
    ("   ", 0, "empty rule"),
    (",", 0, "empty item"),
    ("in,,path=/a", 3, "empty item"),
    ("in,path=/a,", 11, "empty item"),
    ("xyz", 0, "unknown item 'xyz'"),
    ("in,prot=80,path=/a", 3, "did you mean 'port'"),
    ("IN,path=/a", 0, "lower case"),
    ("in, path=/a", 3, "no spaces"),
    ("xxx=1,path=/a", 0, "unknown item 'xxx'"),
    ("=123", 0, "missing item name"),
    ("==", 0, "missing item name"),
    ("in=1,path=/a", 2, "'in' takes no value"),
    ("path=/a,noremove=yes", 16, "'noremove' takes no value"),
    ("tcp=,ignore", 3, "'tcp' takes no value"),
    ("path,in", 0, "'path' needs a value"),
    ("port,ignore", 0, "'port' needs a value"),
    ("in,port=80x,path=/a", 8, "port must be a number from 0 to 65535"),
    ("port=,ignore", 5, "needs a port"),
    ("port=-1,ignore", 5, "port must be a number"),
    ("port=65536,ignore", 5, "port must be a number"),
    ("port=1000000,ignore", 5, "port must be a number"),
    ("port=+1,ignore", 5, "port must be a number"),
    ("port=\u0661,ignore", 5, "port must be a number"),  # Arabic-Indic digit
    ("port=1" + "0" * 5000 + ",ignore", 5, "port must be a number"),
    ("port=x-9,ignore", 5, "start port must be a number"),
    ("port=100-,ignore", 9, "needs an end port"),
    ("port=100-abc,ignore", 9, "end port must be a number"),
    ("port=100-70000,ignore", 9, "end port must be a number"),
    ("port=1-2-3,ignore", 7, "end port must be a number"),
    ("port=200-100,ignore", 5, "lower than its end"),
    ("port=80-80,ignore", 5, "write port=80"),
    ("addr=,ignore", 5, "needs an IPv4 or IPv6 address"),
    ("addr=1.2.3,ignore", 5, "not an IPv4 or IPv6 address"),
    ("addr=localhost,ignore", 5, "not an IPv4 or IPv6 address"),
    ("addr=[::1],ignore", 5, "without brackets"),
    ("addr=fe80::1%eth0,ignore", 12, "zone"),
    ("addr=10.0.0.0/8,ignore", 13, "network"),
    ("in", 2, "no action"),
    ("in,tcp,port=80", 14, "no action"),
    ("path=/a,reject", 8, "already has 'path='"),
    ("ignore,in,systemd=x", 10, "already has 'ignore'"),
    ("reject,reject=EPERM", 7, "already has 'reject'"),
    ("path=,in", 5, "needs a socket path"),
    ("abstract=", 9, "needs a name"),
    ("path=/run/", 9, "cannot end in '/'"),
    ("path=/a\0b", 7, "NUL"),
    ("systemd=", 8, "plain 'systemd'"),
    ("systemd=a:b", 9, "without ':'"),
    ("systemd=caf\u00e9", 11, "printable ASCII"),
    ("systemd=" + "x" * 256, 8, "255"),
    ("out,systemd", 4, "only works for incoming"),
    ("reject=", 7, "needs an error"),
    ("reject=-1", 7, "unknown error name"),
    ("reject=INVALIDERRORCODE", 7, "unknown error name 'INVALIDERRORCODE'"),
    ("reject=EPRM", 7, "did you mean EPERM"),
    ("reject=0", 7, "from 1 to 4095"),
    ("reject=4096", 7, "from 1 to 4095"),
    ("blackhole", 0, "only works for incoming"),
    ("out,blackhole", 4, "add 'in'"),
    ("in,blackhole,out", 3, "add 'in'"),
    ("from-unix=,ignore", 10, "needs a glob pattern"),
    ("from-abstract=,ignore", 14, "needs a glob pattern"),
    ("from-unix=/a,addr=1.2.3.4,ignore", 13, "addr= cannot be combined with from-unix="),
    ("port=80,from-unix=/a,ignore", 8, "from-unix= cannot be combined with port="),
    ("from-abstract=a,port=1,ignore", 16, "port= cannot be combined"),
    ("from-unix=/a,from-abstract=b,ignore", 13, "exclude each other"),
    ("noremove,abstract=x", 0, "'noremove' only works with path="),
    ("reject,mode=0600", 7, "'mode' only works with path="),
    ("ignore,owner=0", 7, "'owner' only works with path="),
    ("in,systemd,group=0", 11, "'group' only works with path="),
    ("path=/a,mode=0999", 13, "octal"),
    ("path=/a,mode=10000", 13, "octal"),
    ("path=/a,mode=", 13, "octal"),
    ("path=/a,owner=", 14, "needs a user"),
    ("path=/a,owner=no-such-user-xyz", 14, "unknown user 'no-such-user-xyz'"),
    ("path=/a,group=no-such-group-xyz", 14, "unknown group 'no-such-group-xyz'"),
    ("path=/a,owner=4294967295", 14, "user id must be"),
])
def test_error_positions_and_reasons(text, pos, phrase):
    err = error(text)
    assert err.position == pos, str(err)
    assert phrase in err.reason, str(err)
    assert err.rule_text == text and err.source is None


def test_path_length_limit():
    ok = "/" + "a" * (SUN_PATH_MAX - 1)
    assert parse(f"path={ok}").target == ok
    err = error(f"in,path={ok}b")
    assert err.position == 8 and "socket path too long" in err.reason
    assert "108 bytes" in err.reason


def test_path_length_counts_bytes_and_cwd():
    err = error("path=/" + "\u00e9" * 54)  # 1 + 108 bytes
    assert "socket path too long" in err.reason
    err = error("path=x.sock", cwd="/" + "d" * 100)
    assert err.position == 5 and "once made absolute" in err.reason


def test_path_template_length_uses_shortest_expansion():
    # 101 literal bytes + %p (at least "0") + %t (at least "tcp") = 105: fine.
    parse("path=/" + "a" * 100 + "%p%t")
    err = error("path=/" + "a" * 104 + "%t")
    assert "at least 108 bytes" in err.reason


def test_abstract_name_length_limit():
    assert parse("abstract=" + "n" * SUN_PATH_MAX).target == "n" * SUN_PATH_MAX
    err = error("abstract=" + "n" * (SUN_PATH_MAX + 1))
    assert err.position == 9 and "abstract name too long" in err.reason


def test_error_message_layout():
    err = error("in,port=80x,path=/a")
    lines = str(err).split("\n")
    assert lines[0] == "bad rule: in,port=80x,path=/a"
    assert lines[1] == " " * (len("bad rule: ") + 8) + "^ " + err.reason


def test_error_message_layout_with_source_and_odd_characters():
    err = RuleError("a\tb\u4e2dxyz", 4, "boom", source="rules.txt:3")
    lines = str(err).split("\n")
    assert len(lines) == 2
    assert lines[0] == "rules.txt:3: bad rule: a?b\u4e2dxyz"
    # The wide character takes two columns.
    assert lines[1].index("^") == len("rules.txt:3: bad rule: ") + 5
    assert lines[1].endswith("^ boom")


def test_error_at_end_of_rule_has_caret_past_text():
    err = error("in,tcp")
    assert str(err).split("\n")[1].index("^") == len("bad rule: in,tcp")


def test_source_is_kept():
    err = error("bogus", source="x.rules:7")
    assert err.source == "x.rules:7" and str(err).startswith("x.rules:7: bad rule: bogus")


def test_rule_error_pickles():
    err = error("in,port=x,ignore", source="f:1")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.rule_text, copy.position, copy.reason, copy.source) == (
        err.rule_text, err.position, err.reason, err.source)


def test_missing_working_directory_is_a_rule_error(monkeypatch):
    def gone():
        raise FileNotFoundError(2, "No such file or directory")
    monkeypatch.setattr(os, "getcwd", gone)
    with pytest.raises(RuleError) as info:
        parse_rule("path=x.sock")
    assert info.value.position == 5 and "no current directory" in info.value.reason
    assert parse_rule("path=/abs").target == "/abs"  # absolute needs no cwd


def test_relative_cwd_is_refused():
    err = error("path=x", cwd="rel/dir")
    assert "not absolute" in err.reason


# --------------------------------------------------------------------------
# Rule files


def test_rule_file(tmp_path):
    path = tmp_path / "rules.txt"
    path.write_text(
        "# a comment\n"
        "\n"
        "   # an indented comment\n"
        "in,tcp,port=80,path=web.sock\n"
        "  out,addr=::1,reject=EPERM  \r\n"
        "\t\n"
        "ignore")
    rules = parse_rule_file(str(path), cwd="/srv")
    assert [r.action for r in rules] == ["path", "reject", "ignore"]
    assert rules[0].target == "/srv/web.sock"
    assert rules[1].text == "out,addr=::1,reject=EPERM"
    assert rules[1].errno == errno.EPERM


def test_rule_file_error_has_file_and_line(tmp_path):
    path = tmp_path / "rules.txt"
    path.write_text("# header\nin,path=/a\n\n  in,port=99999,path=/b\n")
    with pytest.raises(RuleError) as info:
        parse_rule_file(str(path))
    err = info.value
    assert err.source == f"{path}:4"
    assert err.rule_text == "in,port=99999,path=/b" and err.position == 8
    assert str(err).startswith(f"{path}:4: bad rule: in,port=99999")


def test_rule_file_empty_and_comment_only(tmp_path):
    path = tmp_path / "rules.txt"
    path.write_text("")
    assert parse_rule_file(str(path)) == []
    path.write_text("#only\n   \n")
    assert parse_rule_file(str(path)) == []


def test_rule_file_unreadable_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        parse_rule_file(str(tmp_path / "missing.txt"))
    with pytest.raises(OSError):
        parse_rule_file(str(tmp_path))  # a directory


def test_rule_file_non_utf8_path(tmp_path):
    path = tmp_path / "rules.txt"
    path.write_bytes(b"path=/run/\xff.sock\n")
    rule = parse_rule_file(str(path))[0]
    assert os.fsencode(rule.target) == b"/run/\xff.sock"


# --------------------------------------------------------------------------
# Printing


@pytest.mark.parametrize("text,canonical", [
    ("path=/a", "path=/a"),
    ("stream,in,port=0080,path=/a,noremove", "in,tcp,port=80,path=/a,noremove"),
    ("datagram,out,addr=0:0::1,reject=eperm", "out,udp,addr=::1,reject=EPERM"),
    ("addr=::ffff:1.2.3.4,port=1-2,reject=13", "addr=1.2.3.4,port=1-2,reject"),
    ("in,systemd=web", "in,systemd=web"),
    ("in,blackhole", "in,blackhole"),
    (r"from-unix=/a\,b\\c\*,path=/x\,y", r"from-unix=/a\,b\\c\\*,path=/x\,y"),
    ("from-abstract=q,abstract=%t%%", "from-abstract=q,abstract=%t%%"),
    ("path=/a,group=0,owner=0,mode=660", "path=/a,mode=0660,owner=0,group=0"),
])
def test_format_rule_canonical(text, canonical):
    rule = parse(text)
    assert format_rule(rule) == canonical
    assert parse(canonical) == rule.replace(text=canonical)


def test_describe_rows():
    rows = describe(parse("in,tcp,addr=127.0.0.1,port=8080,path=/run/x.sock"))
    assert rows[:6] == [("direction", "incoming"), ("type", "stream"),
                        ("address", "127.0.0.1"), ("port", "8080"),
                        ("action", "path"), ("socket path", "/run/x.sock")]
    assert ("remove on close", "yes") in rows


def test_describe_other_actions():
    assert ("error", "EPERM (1)") in describe(parse("reject=EPERM"))
    assert ("systemd socket", "next one, in order") in describe(parse("systemd"))
    assert ("systemd socket", "web") in describe(parse("systemd=web"))
    assert ("abstract name", "a%p") in describe(parse("abstract=a%p"))
    rows = describe(parse("out,udp,from-unix=/a/*,path=/b,noremove,mode=600,owner=0"))
    assert ("direction", "outgoing") in rows and ("type", "dgram") in rows
    assert ("from unix path", "/a/*") in rows and ("remove on close", "no") in rows
    assert ("mode", "0600") in rows
    assert ("owner", f"0 ({pwd.getpwuid(0).pw_name})") in rows
    assert not any(label in ("address", "port") for label, _ in rows)
    rows = describe(parse("port=1-9,ignore"))
    assert ("direction", "both") in rows and ("port", "1-9") in rows
    assert ("address", "any") in rows and ("type", "both") in rows
    assert ("from abstract name", "x*") in describe(parse("from-abstract=x*,ignore"))


# --------------------------------------------------------------------------
# Property tests

# Characters for free text in values: anything but surrogates (argv decoding
# only yields escaped bytes) and NUL (impossible in argv and paths).
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
_plain = st.text(_chars.filter(lambda c: c != "%"), max_size=12)


@st.composite
def _templates(draw, absolute: bool) -> str:
    parts = draw(st.lists(st.one_of(_plain, st.sampled_from(
        ["%p", "%a", "%t", "%%"])), max_size=6))
    text = ("/" if absolute else "") + "".join(parts)
    if absolute:
        assume(not text.endswith("/"))
    else:
        assume(text)
    return text


@st.composite
def valid_rules(draw) -> Rule:
    action = draw(st.sampled_from(
        ["path", "abstract", "systemd", "reject", "blackhole", "ignore"]))
    direction = draw(st.sampled_from([None, "in", "out"]))
    if action == "blackhole":
        direction = "in"
    if action == "systemd" and direction == "out":
        direction = None
    kind = draw(st.sampled_from(["ip", "unix", "abstract"]))
    address = port = from_unix = from_abstract = None
    if kind == "ip":
        address = draw(st.none() | st.ip_addresses())
        lo = draw(st.none() | st.integers(0, 65535))
        if lo is not None:
            hi = draw(st.sampled_from([lo, None]) | st.integers(lo, 65535))
            port = (lo, lo if hi is None else hi)
            assume(port[0] == port[1] or port[0] < port[1])
    elif kind == "unix":
        from_unix = draw(st.text(_chars, min_size=1, max_size=20))
    else:
        from_abstract = draw(st.text(_chars, min_size=1, max_size=20))
    target = errno_ = None
    noremove = False
    mode = owner = group = None
    if action == "path":
        target = draw(_templates(absolute=True))
    elif action == "abstract":
        target = draw(_templates(absolute=False))
    elif action == "systemd":
        target = draw(st.none() | st.text(st.characters(
            min_codepoint=32, max_codepoint=126, blacklist_characters=":"),
            min_size=1, max_size=20))
    elif action == "reject":
        errno_ = draw(st.integers(1, 4095))
    if action == "path":
        noremove = draw(st.booleans())
        mode = draw(st.none() | st.integers(0, 0o7777))
        owner = draw(st.none() | st.integers(0, 2**32 - 2))
        group = draw(st.none() | st.integers(0, 2**32 - 2))
    rule = Rule(direction=direction,
                socket_type=draw(st.sampled_from([None, "stream", "dgram"])),
                address=address, port=port, from_unix=from_unix,
                from_abstract=from_abstract, action=action, target=target,
                errno=errno_, noremove=noremove, mode=mode, owner=owner,
                group=group)
    if target is not None and action in ("path", "abstract"):
        size = len(expand(target, port=0, address="::", socket_type="stream")
                   .encode("utf-8", "surrogateescape"))
        assume(size <= SUN_PATH_MAX)
    return rule


@settings(max_examples=400, suppress_health_check=[HealthCheck.filter_too_much])
@given(valid_rules())
def test_format_then_parse_round_trips(rule):
    text = format_rule(rule)
    parsed = parse_rule(text, cwd="/nonexistent")
    assert parsed.replace(text="") == rule.replace(text="")
    assert format_rule(parsed) == text


_items = st.sampled_from([
    "in", "out", "tcp", "udp", "stream", "dgram", "datagram", "noremove",
    "addr=::1", "addr=::ffff:1.2.3.4", "address=10.0.0.1", "port=80",
    "port=1-65535", "from-unix=/run/*.s\\,ock", "from-abstract=a\\\\b",
    "path=rel/%p", "path=/a\\,b", "abstract=x%t", "systemd", "systemd=web",
    "reject", "reject=eperm", "blackhole", "ignore", "mode=640", "owner=0",
    "group=0",
])


@given(st.lists(_items, min_size=1, max_size=6))
def test_any_rule_that_parses_round_trips(items):
    text = ",".join(items)
    try:
        rule = parse_rule(text, cwd="/w")
    except RuleError as err:
        assert 0 <= err.position <= len(text)
        assert not err.reason.startswith("cannot parse this rule")
        return
    again = parse_rule(format_rule(rule), cwd="/elsewhere")
    assert again.replace(text="") == rule.replace(text="")


@settings(max_examples=500)
@given(st.text())
def test_arbitrary_text_only_raises_rule_error(text):
    try:
        rule = parse_rule(text, cwd="/w")
    except RuleError as err:
        assert 0 <= err.position <= len(text)
        assert err.reason and not err.reason.startswith("cannot parse this rule")
        assert str(err).count("\n") == 1
    else:
        assert rule.action in ("path", "abstract", "systemd", "reject",
                               "blackhole", "ignore")


@settings(max_examples=300)
@given(st.text(st.sampled_from(list("ab,=\\%-/0123456789:in"))))
def test_rule_shaped_text_only_raises_rule_error(text):
    # Text built from the rule language's own characters reaches far more
    # code than random unicode does.
    try:
        parse_rule(text, cwd="/w")
    except RuleError as err:
        assert not err.reason.startswith("cannot parse this rule")




@pytest.mark.parametrize("odd", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_rule_file_lines_end_at_newline_only(tmp_path, odd):
    """Only \\n (or \\r\\n) ends a line: other characters Python calls line
    breaks stay in the value, and the line numbers of errors stay right."""
    path = tmp_path / "rules.txt"
    path.write_text(f"in,port=80,path=/run/a{odd}b.sock\nin,port=99999,path=/b\n", encoding="utf-8")
    with pytest.raises(RuleError) as info:
        parse_rule_file(str(path))
    assert info.value.source == f"{path}:2"
    path.write_text(f"in,port=80,path=/run/a{odd}b.sock\n", encoding="utf-8")
    (rule,) = parse_rule_file(str(path))
    assert rule.target == f"/run/a{odd}b.sock"
