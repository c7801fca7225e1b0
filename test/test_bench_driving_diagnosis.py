"""bench/driving_diagnosis.py: the breakdown of near misses is a partition of the missed obstacles."""
import re

import pytest

from bench_modules import load_bench


def _load():
    return load_bench("driving_diagnosis")


@pytest.mark.slow
def test_miss_causes_add_up_and_every_drive_is_reported(capsys):
    assert _load().main(["--drives", "1", "--frames", "4", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"drive 30000000: false alarms \d+, pixel AP", out)) == 1
    m = re.search(r"obstacles (\d+): detected (\d+) .*missed (\d+): no pixel >= threshold (\d+), > half inside "
                  r"false instances only (\d+), other (\d+)", out)
    assert m, out
    total, hit, missed, none, swallowed, other = map(int, m.groups())
    assert total > 0 and hit + missed == total and none + swallowed + other == missed
    sizes = [int(n) for n in re.findall(r"visible area \S+ px: (\d+) obstacles", out)]
    assert sum(sizes) == total
    kinds = re.search(r"recall by obstacle kind \(synthroad generator\): (.*)", out).group(1)
    per_kind = [tuple(map(int, f.split()[1].split("/"))) for f in kinds.split(", ")]
    assert sum(n for _, n in per_kind) == total and sum(k for k, _ in per_kind) == hit
    bands = re.search(r"false alarms \(per frame, untracked\) by distance band: (.*)", out).group(1)
    # every false alarm is counted once by drive, by band and by ground-truth class
    n_false = sum(int(n) for n in re.findall(r"drive \d+: false alarms (\d+)", out))
    assert sum(int(f.rsplit(" ", 1)[1]) for f in bands.split(", ") if f) == n_false
    classes = re.search(r"false alarms by ground-truth class of most of their pixels: (.*)", out)
    assert (classes is None) == (n_false == 0)
    if classes:
        assert sum(int(f.rsplit(" ", 1)[1]) for f in classes.group(1).split(", ")) == n_false
    fa = re.search(r"false alarms (\d+): (\d+) reach the bottom border", out)
    assert fa and int(fa.group(2)) <= int(fa.group(1))
