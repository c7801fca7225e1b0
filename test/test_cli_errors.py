"""Every ``csl-ros`` subcommand answers a user error (bad arguments, a broken YAML file, a bad device,
an unwritable output) with one line on stderr and exit code 2, never a traceback. The commands run
in process through ``csl_ros.cli.main`` (the console script's function); each case fails before any
heavy work (rendering, training, model loading)."""
from __future__ import annotations

import numpy as np
import pytest

from csl_ros.cli import main

BROKEN_YAML = "scheme: '2\nteacher: [sml\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    (root / "broken.yaml").write_text(BROKEN_YAML)
    (root / "a_file").write_text("not a folder\n")
    import cv2
    cv2.imwrite(str(root / "frame.png"), np.zeros((32, 64, 3), np.uint8))
    (root / "scores").mkdir()
    (root / "labels").mkdir()
    np.save(root / "scores" / "f0.npy", np.random.default_rng(0).random((32, 64), dtype=np.float32))
    label = np.zeros((32, 64), np.uint8)
    label[10:20, 10:20] = 1
    cv2.imwrite(str(root / "labels" / "f0_labels_semantic.png"), label)
    return root


def _cases(r):
    """(id, argv, words expected in the error line); ``r`` is the fixture folder."""
    f, y = str(r / "a_file"), str(r / "broken.yaml")
    img = str(r / "frame.png")
    return [
        ("synth-args", ["synth", "--layout", "nope", "--split", "val", "--out", str(r / "s")], "invalid choice"),
        ("synth-out", ["synth", "--layout", "cityscapes", "--split", "val", "--frames", "1", "--size", "32x64",
                       "--out", f], "a_file"),
        ("demo-args", ["demo", "--out", str(r / "d"), "--frames", "many"], "invalid int value"),
        ("demo-yaml", ["demo", "--out", str(r / "d"), "--config", y], "not valid YAML at line"),
        ("demo-device", ["demo", "--out", str(r / "d"), "--set", "device=banana"], "is not a device"),
        ("demo-out", ["demo", "--out", f, "--frames", "2", "--size", "32x64"], "exists and is not a directory"),
        ("detect-args", ["detect", img], "required: --out"),
        ("detect-yaml", ["detect", img, "--out", str(r / "o"), "--config", y], "not valid YAML at line"),
        ("detect-device", ["detect", img, "--out", str(r / "o"), "--set", "device=banana"], "is not a device"),
        ("detect-out", ["detect", img, "--out", f], "exists and is not a directory"),
        ("metrics-args", ["metrics", "--scores", str(r / "scores")], "required"),
        ("metrics-out", ["metrics", "--scores", str(r / "scores"), "--labels", str(r / "labels"), "--track",
                         "obstacle", "--quiet", "--out", str(r / "a_file" / "m.json")], "a_file"),
        ("bag-args", ["bag", "convert", "--dataset", "synthroad"], "required: --out"),
        ("bag-out", ["bag", "convert", "--dataset", "synthroad", "--frames", "1", "--size", "32x64", "--quiet",
                     "--out", f], "a_file"),
        ("bag-info", ["bag", "info", str(r / "no_bag")], "no_bag"),
        ("evaluate-args", ["evaluate", "--bag", str(r)], "required: --out"),
        ("evaluate-yaml", ["evaluate", "--bag", str(r), "--out", str(r / "e"), "--config", y], "not valid YAML"),
        ("evaluate-device", ["evaluate", "--bag", str(r), "--out", str(r / "e"), "--set", "device=banana"],
         "is not a device"),
        ("evaluate-out", ["evaluate", "--bag", str(r), "--out", f], "exists and is not a directory"),
        ("teacher-args", ["teacher", "fit-stats", "--data", "synthroad"], "required: --segmenter"),
        ("teacher-device", ["teacher", "fit-stats", "--segmenter", img, "--data", "synthroad", "--device",
                            "banana"], "invalid device 'banana'"),
        ("train-args", ["train", "student", "--scheme", "2"], "invalid choice"),
        ("train-yaml", ["train", "student", "--config", y, "--out", str(r / "t")], "not valid YAML at line"),
        ("train-device", ["train", "student", "--set", "run.device=banana", "--out", str(r / "t")],
         "is not a device"),
        ("train-out", ["train", "student", "--out", f], "exists and is not a directory"),
        ("train-segmenter-yaml", ["train", "segmenter", "--config", y], "not valid YAML at line"),
        ("train-segmenter-device", ["train", "segmenter", "--set", "device=banana", "--out", str(r / "g")],
         "invalid device 'banana'"),
    ]


CASE_IDS = [c[0] for c in _cases(__import__("pathlib").Path("/x"))]


@pytest.mark.parametrize("case", CASE_IDS)
def test_user_error_is_one_line_and_exit_code_2(files, case, capsys):
    _, argv, words = next(c for c in _cases(files) if c[0] == case)
    with pytest.raises(SystemExit) as stop:  # argparse errors exit through SystemExit
        raise SystemExit(main(argv))
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, err  # progress bars aside, one line
    assert lines[0].startswith(f"csl-ros {argv[0]}") and ": error: " in lines[0] and words in lines[0], lines[0]


def test_every_subcommand_is_covered():
    from csl_ros.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    covered = {case.split("-")[0] for case in CASE_IDS}
    assert set(sub.choices) == covered
