"""The `redirect` command line."""
from __future__ import annotations

import argparse
import os
import sys

from . import OWN_FAILURE, __version__
from .rules import Rule, RuleError, describe, parse_rule, parse_rule_file

USAGE = "redirect [options] -r RULE [-r RULE ...] [-f FILE ...] [--] PROGRAM [ARGS...]"
EPILOG = """\
A rule is comma-separated items, e.g.  in,tcp,port=8080,path=/run/app/http.sock
  matches:  in | out, tcp | udp, addr=ADDRESS, port=N | port=A-B,
            from-unix=GLOB, from-abstract=GLOB
  actions:  path=PATH, abstract=NAME, systemd[=FDNAME], reject[=ERRNO],
            blackhole, ignore
  flags:    noremove, mode=OCTAL, owner=USER, group=GROUP
  placeholders in path/abstract: %p port, %a address, %t tcp|udp, %%
Rules are tried in order; the first match decides. More: man redirect.

Exit status: the program's; 125 when redirect itself fails (a bad rule, no
rules, a backend that cannot run here); 126 the program cannot be executed;
127 it is not found; 128+N it died of signal N.
"""



class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """Usage errors are redirect's own failures too (argparse says 2)."""
        self.print_usage(sys.stderr)
        self.exit(OWN_FAILURE, f"redirect: {message}\n")


class _RuleSource(argparse.Action):
    """-r and -f keep their relative order: the first matching rule wins."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.sources.append((option_string, value))


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, told the terminal's width (its own way imports shutil at
    every start, ~2 ms, for the same os call)."""

    def __init__(self, prog: str) -> None:
        try:
            width = os.get_terminal_size(sys.stdout.fileno()).columns
        except (OSError, ValueError):
            width = int(os.environ.get("COLUMNS", 80)) if os.environ.get("COLUMNS", "").isdigit() else 80
        super().__init__(prog, width=width - 2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="redirect", usage=USAGE, epilog=EPILOG, formatter_class=_Formatter,
                                description="Run PROGRAM with its IP sockets turned into Unix "
                                            "domain sockets, as the rules say.")
    p.add_argument("-r", "--rule", action=_RuleSource, metavar="RULE", help="a rule (repeatable)")
    p.add_argument("-f", "--rules-file", action=_RuleSource, metavar="FILE",
                   help="a file of rules, one per line, '#' comments (repeatable; - is stdin)")
    p.add_argument("-c", "--check", action="store_true", help="check the rules and exit")
    p.add_argument("-p", "--print", action="store_true", dest="print_rules",
                   help="print the rule table: on stderr before running PROGRAM, on stdout with -c "
                        "or without a PROGRAM (and exit)")
    for flag, text in (
            ("--sealed", "refuse every IP socket no rule converts (bind: EACCES, connect/send: ENETUNREACH; "
                         "logged): the program cannot reach the real network"),
            ("--activate", "create and listen on the socket of every in rule with path= or abstract= before the "
                           "program starts; its bind gets that socket (as with systemd)"),
            ("--on-demand", "--activate, and start the program only when the first connection or datagram "
                            "arrives (it waits in the socket); when the program ends, the next one starts it "
                            "again, as systemd does (at most 5 times in 10 s)"),
            ("--once", "with --on-demand: end when the program ends"),
            ("--notify-ready", "tell systemd READY=1 (NOTIFY_SOCKET, Type=notify units) once every in rule "
                               "with a fixed socket name has its socket ready")):
        p.add_argument(flag, action="store_true", help=text)
    p.add_argument("--backend", choices=("auto", "notify", "ptrace"),
                   default=os.environ.get("REDIRECT_BACKEND", "auto"),
                   help="how calls are trapped: notify (seccomp user notification, fast; Linux 5.14+) or "
                        "ptrace (the fallback); auto (the default, or $REDIRECT_BACKEND) picks notify where "
                        "the kernel has what it needs. -v says which runs and why")
    p.add_argument("--count-calls", metavar="FILE",
                   help="when the program ends, write how many of its calls redirect trapped, per "
                        "syscall, to FILE (JSON): what redirect costs a workload")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more (-v: every conversion and redirected connect; -vv: also every accept on a "
                        "converted socket, and every socket left alone and why)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="do not warn about listeners no rule converts (they stay on the network)")
    p.add_argument("--version", action="version", version=f"redirect {__version__}")
    # For the Python API: the log to this fd (apart from the program's
    # stderr); die of the program's signal (subprocess's returncode -N).
    p.add_argument("--log-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--die-like-program", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(sources=[])
    return p


def load_rules(sources: list[tuple[str, str]]) -> list[Rule]:
    """Raises RuleError, or OSError for a rule file that cannot be read."""
    rules: list[Rule] = []
    for option, value in sources:
        if option in ("-r", "--rule"):
            rules.append(parse_rule(value))
        else:
            rules.extend(parse_rule_file("/dev/stdin" if value == "-" else value))
    return rules


def print_table(rules: list[Rule], out=sys.stdout) -> None:
    for number, rule in enumerate(rules, 1):
        print(f"Rule #{number}: {rule.text}", file=out)
        rows = describe(rule)
        width = max((len(key) for key, _ in rows), default=0)
        for key, value in rows:
            print(f"  {key.ljust(width)}  {value}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        rules = load_rules(args.sources)
    except RuleError as err:
        prefix = "redirect: "  # indent the caret line by as much, so it stays under its character
        print(prefix + str(err).replace("\n", "\n" + " " * len(prefix)), file=sys.stderr)
        return OWN_FAILURE
    except OSError as err:
        print(f"redirect: cannot read rule file {err.filename}: {err.strerror}", file=sys.stderr)
        return OWN_FAILURE
    if args.print_rules:  # beside a program, on stderr: its own output stays its own
        out = sys.stdout if args.check or not command else sys.stderr
        try:
            print_table(rules, out)
            out.flush()
        except BrokenPipeError:
            raise  # (console(): as SIGPIPE would end us)
        except OSError as err:  # a full disk
            print(f"redirect: cannot write the rule table: {err.strerror}", file=sys.stderr)
            return OWN_FAILURE
    if args.check:
        if not rules:
            print("redirect: -c: no rules given (-r RULE or -f FILE)", file=sys.stderr)
            return OWN_FAILURE
        print(f"redirect: {len(rules)} rule(s) OK", file=sys.stderr)
        return 0
    if not command:
        if args.print_rules:
            return 0
        parser.print_usage(sys.stderr)
        print("redirect: no PROGRAM given", file=sys.stderr)
        return OWN_FAILURE
    if not command[0]:
        print("redirect: : command not found (the program name is empty)", file=sys.stderr)
        return 127
    if args.once and not args.on_demand:
        print("redirect: --once is for --on-demand (without it the program runs once anyway)", file=sys.stderr)
        return OWN_FAILURE
    if args.on_demand and not args.activate:
        args.activate = True  # --on-demand means: open the sockets first, start at the first connection
    if not rules and not args.sealed:
        # As ip2unix: a forgotten -r would leave the program on real TCP and UDP.
        print("redirect: no rules given: the program would run with its IP sockets unchanged (give -r RULE "
              "or -f FILE; --sealed alone runs it cut off from the network)", file=sys.stderr)
        return OWN_FAILURE

    from .child import SpawnError
    from .supervisor import Supervisor  # the kernel bindings load only when needed

    log_file = None
    if args.log_fd is not None:
        os.set_inheritable(args.log_fd, False)  # ours: the program must not inherit it
        log_file = os.fdopen(args.log_fd, "w", buffering=1)
    supervisor = Supervisor(rules, verbosity=args.verbose, activate=args.activate, on_demand=args.on_demand,
                            sealed=args.sealed, backend=args.backend, quiet=args.quiet, log_file=log_file,
                            once=args.once, notify_ready=args.notify_ready)
    try:
        status = supervisor.run(command)
    except SpawnError as err:
        supervisor.log(0, str(err))
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        if args.count_calls:
            _write_counts(args.count_calls, supervisor)
    if args.die_like_program and supervisor.main_status is not None and os.WIFSIGNALED(supervisor.main_status):
        _die_of(os.WTERMSIG(supervisor.main_status))
    return status


def console() -> None:
    """The command's entry point: main(), then out without the interpreter's
    tear-down (freeing every module and object: ~5 ms of each run), which has
    nothing left to do. The run's own finally blocks removed its socket files
    and wrote its counts; only the standard streams are flushed here."""
    try:
        status = main()
    except BrokenPipeError:  # a reader that stopped early (redirect -p ... | head): no traceback
        status = 128 + 13  # as a command killed by SIGPIPE
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # (what is left unwritten is a line or two of ours, already failed once)
            status = status or 120  # as Python's own exit would say
    os._exit(status)


def _die_of(sig: int) -> None:
    """End this process by the signal the program died of (after the
    clean-up: files removed, counts written by the caller's finally)."""
    import signal

    sys.stdout.flush()
    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)


def _write_counts(path: str, supervisor) -> None:
    import json  # only with --count-calls

    try:
        with open(path, "w") as out:
            json.dump({"backend": supervisor.backend.NAME if supervisor.backend else None,
                       "trapped": dict(sorted(supervisor.trapped.items())),
                       "compiled": dict(sorted(supervisor.compiled.items()))}, out)
            out.write("\n")
    except OSError as err:
        print(f"redirect: --count-calls: cannot write {path}: {err.strerror}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
