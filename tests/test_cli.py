"""The command line: rule errors point at the character, -c/-p/-h/--version."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from helpers import REDIRECT, free_port, run


def test_bad_rule_points_at_the_character():
    result = run(REDIRECT + ["-r", "in,port=80x,path=/run/a.sock", "--", "true"])
    assert result.returncode == 125
    lines = result.stderr.rstrip("\n").splitlines()
    assert "in,port=80x,path=/run/a.sock" in lines[0]
    caret = lines[1].index("^")
    assert lines[0][caret] == "8"  # under the bad value
    assert "Traceback" not in result.stderr


def test_bad_rule_in_file_names_file_and_line(tmp_path):
    rules = tmp_path / "rules"
    rules.write_text("# comment\n\nin,port=80,path=/run/a.sock\nout,prot=1,ignore\n")
    result = run(REDIRECT + ["-f", rules, "-c"])
    assert result.returncode == 125
    assert f"{rules}:4" in result.stderr and "prot" in result.stderr


def test_unreadable_rule_file():
    result = run(REDIRECT + ["-f", "/nonexistent/rules", "-c"])
    assert result.returncode == 125
    assert result.stderr.strip() == "redirect: cannot read rule file /nonexistent/rules: No such file or directory"


def test_check_accepts_good_rules(tmp_path):
    rules = tmp_path / "rules"
    rules.write_text("in,tcp,port=8080,path=/run/app/http.sock\nout,addr=::1,port=5000-5010,abstract=x%p\n")
    result = run(REDIRECT + ["-f", rules, "-r", "in,blackhole", "-c"])
    assert result.returncode == 0, result.stderr
    assert "3 rule(s) OK" in result.stderr


def test_check_rejects_a_fixed_path_too_long():
    result = run(REDIRECT + ["-c", "-r", "in,path=/" + "x" * 120])
    assert result.returncode == 125 and "too long" in result.stderr


def test_print_table_keeps_order():
    result = run(REDIRECT + ["-p", "-r", "in,port=80,path=/run/a.sock", "-r", "out,reject=EPERM"])
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.index("Rule #1: in,port=80,path=/run/a.sock"), result.stdout.index("Rule #2")
    assert first < second
    assert "/run/a.sock" in result.stdout[first:second]


def test_a_reader_that_stops_early_gets_no_traceback():
    """redirect -c -p ... | head: the table is more than a pipe holds, the
    reader takes 10 bytes and closes; redirect ends as SIGPIPE would end it."""
    rules = [arg for n in range(1, 400) for arg in ("-r", f"in,port={n},path=/run/app/{n}.sock")]
    proc = subprocess.Popen(REDIRECT + ["-c", "-p", *rules], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(10) == b"Rule #1: i"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 141
    assert "Traceback" not in err and "Error" not in err, err


def test_a_full_disk_is_said_not_a_traceback():
    with open("/dev/full", "w") as full:
        result = subprocess.run(REDIRECT + ["-c", "-p", "-r", "in,port=80,path=/run/a.sock"], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=30)
    assert result.returncode == 125
    assert result.stderr.strip() == "redirect: cannot write the rule table: No space left on device", result.stderr


def test_help_and_version():
    help_text = run(REDIRECT + ["-h"])
    assert help_text.returncode == 0 and "-r RULE" in help_text.stdout and "blackhole" in help_text.stdout
    version = run(REDIRECT + ["--version"])
    assert version.returncode == 0 and version.stdout.startswith("redirect ")


def test_no_program_is_a_usage_error():
    result = run(REDIRECT + ["-r", "in,port=1,reject"])
    assert result.returncode == 125 and "no PROGRAM given" in result.stderr


def test_program_options_are_not_taken_for_ours():
    result = run(REDIRECT + ["-r", "in,port=1,reject", "--", "sh", "-c", "echo $0 $1", "-v", "-r"])
    assert result.returncode == 0
    assert result.stdout.strip() == "-v -r"


def test_rules_from_stdin():
    result = run(REDIRECT + ["-f", "-", "-c"], input="in,port=80,path=/run/a.sock\nout,prot=1,ignore\n")
    assert result.returncode == 125 and "/dev/stdin:2" in result.stderr


def test_no_rules_is_refused_unless_sealed(sockdir):
    """As ip2unix: without rules the program would run on real sockets; a
    forgotten -r is refused (--sealed alone is a rule set of its own)."""
    marker = sockdir / "ran"
    result = run(REDIRECT + ["--", "touch", marker])
    assert result.returncode == 125 and "no rules given" in result.stderr, result.stderr
    assert not marker.exists()
    sealed = run(REDIRECT + ["--sealed", "--", "touch", marker])
    assert sealed.returncode == 0 and marker.exists(), sealed.stderr


def test_print_beside_a_program_goes_to_stderr():
    """-p with a program: the table on stderr, the program's output alone on
    stdout; -p -c: on stdout."""
    ran = run(REDIRECT + ["-p", "-r", "in,port=80,path=/run/a.sock", "--", "echo", "program output"])
    assert ran.returncode == 0 and ran.stdout == "program output\n", ran.stdout
    assert "Rule #1: in,port=80,path=/run/a.sock" in ran.stderr
    checked = run(REDIRECT + ["-p", "-c", "-r", "in,port=80,path=/run/a.sock", "--", "echo", "never"])
    assert checked.returncode == 0 and checked.stdout.startswith("Rule #1: in,port=80"), checked.stdout


def test_permission_options_check():
    result = run(REDIRECT + ["-c", "-r", "in,port=80,path=/run/a.sock,mode=0660,owner=root,group=0"])
    assert result.returncode == 0 and "warning" not in result.stderr
    for bad in ("mode=0998", "owner=no-such-user-here", "group=no-such-group-here"):
        result = run(REDIRECT + ["-c", "-r", f"in,port=80,path=/run/a.sock,{bad}"])
        assert result.returncode == 125 and "^" in result.stderr, (bad, result.stderr)


def test_redirects_own_failures_exit_125(sockdir):
    """125 for redirect's own failures (usage, rules, -c without rules), so a
    program's own 1 or 2 is never taken for one; -h lists the statuses."""
    help_text = run(REDIRECT + ["-h"]).stdout
    assert "125 when redirect itself fails" in help_text and "127 it is not found" in help_text
    assert run(REDIRECT + ["--no-such-option"]).returncode == 125
    checked = run(REDIRECT + ["-c"])
    assert checked.returncode == 125 and "no rules given" in checked.stderr, checked.stderr
    own = run(REDIRECT + ["-r", "in,port=1,reject", "--", "sh", "-c", "exit 2"])
    assert own.returncode == 2  # the program's status, untouched
    missing = run(REDIRECT + ["-r", "in,port=1,reject", "--", sockdir / "nothing-here"])
    assert missing.returncode == 127, missing.stderr


def test_log_lines_carry_syslog_priorities_on_a_socket(bins, sockdir):
    """Where stderr is a socket (the journal's stream is one), each line
    starts with its priority, as systemd reads it: <3> errors, <4> warnings,
    <6> the rest; on a pipe or terminal, none."""
    def journal(argv, stdin=subprocess.DEVNULL):
        ours, theirs = socket.socketpair()
        with ours, theirs:
            result = subprocess.run([str(a) for a in argv], stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=theirs, timeout=30, text=True)
            theirs.close()
            ours.settimeout(5)
            log = b""
            while chunk := ours.recv(65536):
                log += chunk
        return result, [line for line in log.decode().splitlines() if "redirect: " in line]  # (the program's share it)

    port, other = free_port(), free_port()
    argv = REDIRECT + ["-v", "-r", f"in,port={port},path={sockdir}/no/such/dir/a.sock", "-r",
                       f"in,port={other + 1},path={sockdir}/b.sock", "--", bins / "tcp-server-glibc", "127.0.0.1", port]
    result, lines = journal(argv)
    assert result.returncode == 1, lines  # the server cannot listen: its own status
    assert any(line.startswith("<6>redirect: backend: ") for line in lines), lines
    assert any(line.startswith("<3>redirect: ") and "its directory does not exist" in line for line in lines), lines
    assert all(re.match(r"<[346]>redirect: ", line) for line in lines), lines
    # A warning: a listener no rule converts (said when it listens).
    server = REDIRECT + ["-r", f"in,port={other + 1},path={sockdir}/b.sock", "--", "sh", "-c",
                         f"{bins}/tcp-server-glibc 127.0.0.1 {other} & sleep 1; kill $!"]
    _, lines = journal(server)
    assert any(line.startswith(f"<4>redirect: warning: 127.0.0.1:{other} (tcp) stays on the network")
               for line in lines), lines
    piped = run(argv)
    assert piped.stderr.startswith("redirect: "), piped.stderr


REPO_ROOT = Path(__file__).resolve().parent.parent


def test_man_page_and_completions_are_the_parsers():
    """redirect(1) and the bash/zsh completions are generated from the
    parser (scripts/generate-manual.py) and in step with it; the page renders,
    bash completes an option and its choices, zsh reads its file."""
    check = run([sys.executable, REPO_ROOT / "scripts" / "generate-manual.py", "--check"])
    assert check.returncode == 0, check.stderr
    page = run(["groff", "-man", "-Tutf8", REPO_ROOT / "docs" / "redirect.1"], env=dict(os.environ, GROFF_NO_SGR="1"))
    text = re.sub(r".\x08", "", page.stdout)
    assert page.returncode == 0 and "--notify-ready" in text and "125 when redirect itself fails" in text, page.stderr
    assert "man redirect" in run(REDIRECT + ["-h"]).stdout
    script = ("source completion/redirect; COMP_WORDS=(redirect --bac); COMP_CWORD=1; _shtab_redirect; "
              "echo \"${COMPREPLY[*]}\"; COMP_WORDS=(redirect --backend ''); COMP_CWORD=2; _shtab_redirect; "
              "echo \"${COMPREPLY[*]}\"")
    completed = run(["bash", "-c", script], cwd=REPO_ROOT)
    assert completed.stdout.splitlines() == ["--backend", "auto notify ptrace"], completed.stdout + completed.stderr
    zsh = run(["zsh", "-n", REPO_ROOT / "completion" / "_redirect"])
    assert zsh.returncode == 0, zsh.stderr
