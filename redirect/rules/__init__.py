"""The rule language (docs/rules.md), as ip2unix splits it: what a rule is
and how it matches (model), reading rules from text (parse), the globs of
from-unix= (globpath), the placeholders of path= (placeholders), and rules
as text again (printing).

Pure logic. The only OS contact is os.getcwd() (to make a relative path=
absolute when no cwd is given), reading a rule file, and pwd/grp look-ups
for owner=/group=.
"""
from .globpath import glob_match
from .model import (ACTIONS, SUN_PATH_MAX, Action, Direction, Rule, RuleError, SocketFacts, SocketType, closest,
                    first_match, mismatches)
from .parse import parse_rule, parse_rule_file
from .placeholders import expand
from .printing import describe, escape_value, format_rule

__all__ = ["ACTIONS", "SUN_PATH_MAX", "Action", "Direction", "Rule", "RuleError", "SocketFacts", "SocketType",
           "closest", "describe", "escape_value", "expand", "first_match", "format_rule", "glob_match", "mismatches",
           "parse_rule", "parse_rule_file"]
