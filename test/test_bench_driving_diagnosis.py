"""bench/driving_diagnosis.py: the breakdown of near misses is a partition of the missed obstacles."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_driving_diagnosis", BENCH / "driving_diagnosis.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_miss_causes_add_up_and_every_drive_is_reported(capsys):
    assert _load().main(["--drives", "1", "--frames", "4", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("drive 30000000: pixel AP") == 1
    m = re.search(r"obstacles (\d+): detected (\d+) .*missed (\d+): no pixel >= threshold (\d+), > half inside "
                  r"false instances only (\d+), other (\d+)", out)
    assert m, out
    total, hit, missed, none, swallowed, other = map(int, m.groups())
    assert total > 0 and hit + missed == total and none + swallowed + other == missed
    sizes = [int(n) for n in re.findall(r"visible area \S+ px: (\d+) obstacles", out)]
    assert sum(sizes) == total
    fa = re.search(r"false alarms (\d+): (\d+) reach the bottom border", out)
    assert fa and int(fa.group(2)) <= int(fa.group(1))
