"""Shared pieces of the Python tests that drive the ldcp command-line tool: checks that count and
keep going after a failure (so one run reports every broken behaviour), running a command, and
the error lines of its stderr."""

import subprocess

FAILURES = []
_passed = 0


def check(condition, message):
    global _passed
    if condition:
        _passed += 1
    else:
        FAILURES.append(message)
        print("FAIL:", message)


def passed():
    return _passed


def run(argv, timeout=600):
    return subprocess.run([*map(str, argv)], capture_output=True, text=True, timeout=timeout)


def error_lines(stderr, also_ignore=()):
    """The error lines: CLI11's "Run with --help" hint, the "loading MODEL" progress and any
    line starting with one of `also_ignore` aside."""
    skip = ("Run with --help", "loading ", *also_ignore)
    return [l for l in stderr.strip().splitlines() if l.strip() and not l.startswith(skip)]
