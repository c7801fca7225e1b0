"""bench/driving_diagnosis.py: the breakdown of near misses is a partition of the missed obstacles."""
import re

import numpy as np
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
    sizes = [int(n) for n in re.findall(r"visible area [^:]+ px: (\d+) obstacles", out)]
    assert sum(sizes) == total
    contrasts = [int(n) for n in re.findall(r"contrast to the road around it [^:]+: (\d+) obstacles", out)]
    assert sum(contrasts) == total
    teacher = [int(n) for n in re.findall(r"teacher's class of most of its pixels [^:]+: (\d+) obstacles", out)]
    assert sum(teacher) == total
    reach = re.findall(r"highest fused score on its pixels [^:]+: (\d+) obstacles, recall ([\d.]+|-)", out)
    assert len(reach) == 5 and sum(int(n) for n, _ in reach) == total
    # nothing below the threshold (0.1) is detected: every detected obstacle has a pixel at it
    assert all(r in ("0.0", "-") for _, r in reach[:3]), reach
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


def test_road_contrast_is_the_mean_rgb_difference_to_the_road_ring():
    diag = _load()
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:] = (100, 100, 100)                 # road
    rgb[15:25, 15:25] = (130, 100, 70)       # obstacle: |30| + |0| + |-30| over 3 channels = 20
    rgb[:, :5] = (0, 255, 0)                 # far from the obstacle: outside the ring, not counted
    component = np.zeros((40, 40), bool)
    component[15:25, 15:25] = True
    semantic = np.zeros((40, 40), np.uint8)  # all road (trainId 0)
    assert diag.road_contrast(rgb, component, semantic) == pytest.approx(20.0)
    semantic[:] = 8                          # vegetation all around: no road in the ring
    assert diag.road_contrast(rgb, component, semantic) is None
    assert diag.road_contrast(rgb, component, None) is None


def test_breakdown_table_lists_every_group_with_its_recall():
    diag = _load()
    d = {"near": {"n": 10, "detected": 6, "no_pixel": 3, "swallowed": 0, "other": 1}, "near_m": 30.0,
         "frame_size": [512, 1024],
         "by_size": [{"bin": "10-50 px", "n": 4, "detected": 0}, {"bin": ">= 50 px", "n": 6, "detected": 6}],
         "by_contrast": [{"bin": "0-15", "n": 2, "detected": 1}, {"bin": ">= 15", "n": 8, "detected": 5}],
         "by_kind": [{"bin": "box", "n": 10, "detected": 6}],
         "by_teacher_class": [{"bin": "road", "n": 7, "detected": 3}, {"bin": "car", "n": 3, "detected": 3}],
         "by_reach": [{"bin": "0-0.01", "n": 1, "detected": 0}, {"bin": "0.01-0.03", "n": 2, "detected": 0},
                      {"bin": "0.03-0.1", "n": 1, "detected": 0}, {"bin": "0.1-0.3", "n": 2, "detected": 2},
                      {"bin": ">= 0.3", "n": 4, "detected": 4}]}
    md = diag.breakdown_markdown(d, "CMD")
    assert "`CMD`" in md and "Of 10 obstacle-frames within 30 m, 4 are missed: in 3 " in md
    assert "| visible area | 10-50 px | 4 | 0 | 0.0 % |" in md
    assert "| contrast to the road | 0-15 | 2 | 1 | 50.0 % |" in md
    assert "| obstacle kind (synthroad) | box | 10 | 6 | 60.0 % |" in md
    assert "| teacher's class (most pixels) | road | 7 | 3 | 42.9 % |" in md
    assert "| highest fused score | 0.03-0.1 | 1 | 0 | 0.0 % |" in md
    # within reach at 0.01: 9 of 10, at 0.03: 7, at 0.1: 6, at 0.3: 4
    assert "share within reach at 0.01: 90.0 %, 0.03: 70.0 %, 0.1: 60.0 %, 0.3: 40.0 %." in md


def test_reach_shares_count_every_obstacle_at_or_above_each_edge():
    diag = _load()
    assert [e[0] for e in diag.REACH_BINS][1:] == [0.01, 0.03, 0.1, 0.3]
    by_reach = [{"bin": b, "n": n, "detected": 0} for b, n in zip("abcde", (5, 0, 3, 2, 0))]
    assert diag.reach_shares(by_reach) == [(0.01, 0.5), (0.03, 0.5), (0.1, 0.2), (0.3, 0.0)]
    assert diag.reach_shares([{"bin": b, "n": 0, "detected": 0} for b in "abcde"])[0] == (0.01, 0.0)


def test_teacher_class_groups_pool_the_rare_classes():
    diag = _load()
    classes = np.array([0] * 30 + [13] * 10 + [8] * 1 + [2] * 1 + [-1] * 3)   # -1: no teacher for that one
    hit = np.zeros(classes.size, bool)
    hit[:10] = True      # 10 of the road ones
    hit[30:40] = True    # every car
    hit[40] = True       # the vegetation one
    groups = diag._by_teacher_class(classes, hit)
    assert groups == [{"bin": "road", "n": 30, "detected": 10}, {"bin": "car", "n": 10, "detected": 10},
                      {"bin": "other classes", "n": 2, "detected": 1}]
    assert diag._by_teacher_class(np.full(4, -1), np.ones(4, bool)) == []
