"""Help text with no loose ends: walks every argparse parser of ``csl-ros`` (and ``csl_node``) and checks
that every subcommand has its own one-line description and every option and argument a help text that
says what it is (numbers: with their unit), with no internal notes."""
from __future__ import annotations

import argparse
import re

import pytest

from csl_ros.cli import build_parser, main

# Words that give a number its unit or say what it counts.
UNIT = re.compile(r"\b(px|pixels?|HxW|s|seconds?|ms|Hz|m/s|m|metres?|degrees?|deg|frames?|images?|count|"
                  r"number|N|steps?|factor|fraction|ratio|score|probability|seed|version|bytes?|MB|GiB|"
                  r"threads?|workers?|epochs?|iterations?|percent|%)\b")
# Developer notes that have no place in what a user reads.
INTERNAL = re.compile(r"``|DEMO_STEPS|\bctx\.|Later stages|required-ish|\bTODO\b|\bFIXME\b|\bXXX\b|"
                      r"csl_ros\.(?!config\b)[a-z_.]+")


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    """(command path, parser, {subcommand: its line in this parser's list}) for the tree under ``parser``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    listed = {c.dest: c.help for a in subs for c in a._choices_actions}
    yield path, parser, listed
    for a in subs:
        for name, child in a.choices.items():
            yield from walk(child, path + (name,))


def parsers():
    trees = [("csl-ros", build_parser())]
    try:
        from csl_ros.ros.csl_node import build_arg_parser
    except ImportError:   # no rclpy: the node's parser is checked where ROS is installed
        pass
    else:
        trees.append(("csl_node", build_arg_parser()))
    for name, root in trees:
        yield from walk(root, (name,))


ALL = list(parsers())


def options(parser):
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))]


def name_of(action) -> str:
    return "/".join(action.option_strings) or action.dest


@pytest.mark.parametrize("path,parser,listed", ALL, ids=[" ".join(p) for p, _, _ in ALL])
def test_every_option_and_argument_has_help(path, parser, listed):
    cmd = " ".join(path)
    problems = []
    for a in options(parser):
        text = (a.help or "").strip()
        if not text or text == argparse.SUPPRESS:
            problems.append(f"{name_of(a)}: no help text")
            continue
        if INTERNAL.search(text):
            problems.append(f"{name_of(a)}: internal note in its help: {INTERNAL.search(text).group(0)!r}")
        if a.type in (int, float) and not a.choices and not UNIT.search(text):
            problems.append(f"{name_of(a)}: a number whose help names no unit or count: {text!r}")
    for name, line in listed.items():
        if not (line or "").strip():
            problems.append(f"subcommand {name}: no line in the command list")
    assert not problems, f"`{cmd} --help`:\n  " + "\n  ".join(problems)


def test_every_command_has_its_own_description():
    seen: dict[str, str] = {}
    problems = []
    for path, parser, _ in ALL:
        cmd = " ".join(path)
        desc = (parser.description or "").strip()
        if not desc:
            problems.append(f"`{cmd} --help` has no description")
            continue
        first = desc.splitlines()[0]
        if first in seen:
            problems.append(f"`{cmd} --help` starts like `{seen[first]} --help`: {first!r}")
        seen[first] = cmd
        if INTERNAL.search(desc):
            problems.append(f"`{cmd} --help`: internal note {INTERNAL.search(desc).group(0)!r}")
        if len(path) > 1 and path[-1] not in first:
            problems.append(f"`{cmd} --help`: the first line does not name the command: {first!r}")
    assert not problems, "\n".join(problems)


def test_help_renders_for_every_command(capsys):
    for path, _, _ in ALL:
        if path[0] != "csl-ros":
            continue
        with pytest.raises(SystemExit) as exc:
            main([*path[1:], "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: " + " ".join(path)) and "options:" in out


def test_metrics_without_out_says_where_it_wrote(tmp_path, monkeypatch, capsys):
    import numpy as np
    from test_eval_metrics_cli import make_frames, write_smiyc

    sd, ld = write_smiyc(tmp_path, make_frames(np.random.default_rng(0)))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["metrics", "--scores", str(sd), "--labels", str(ld), "--track", "obstacle", "--quiet"]) == 0
    assert (work / "metrics.json").is_file()
    assert f"wrote {(work / 'metrics.json').resolve()}" in capsys.readouterr().out.splitlines()
