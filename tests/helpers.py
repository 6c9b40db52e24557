"""Helpers shared by the command-line tests."""

import re

from firepe.cli import main


def run_cli(argv) -> int:
    """``firepe ARGV`` in-process (paths and numbers converted to strings); the exit status."""
    return main([str(a) for a in argv])


def one_line_error(capsys, argv, match):
    """Run ``firepe ARGV`` and check the error contract: exit status 2 and exactly one stderr line
    ``firepe: error: ...`` matching ``match`` (output of earlier commands is drained first)."""
    capsys.readouterr()
    code = run_cli(argv)
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("firepe: error:") and err.count("\n") == 1, err
    assert re.search(match, err), err
    return err
