"""``csl-ros metrics``: score saved score maps against benchmark label PNGs with the SMIYC protocol.

Scores: one float ``.npy`` per frame (higher = more anomalous), anywhere under ``--scores``, named in
any of the three styles in use: ``<fid>.npy`` (csl-ros evaluate), ``<label file stem>.npy`` (the
official tooling, e.g. ``validation0000_labels_semantic.npy``) or ``<image stem>_anomaly.npy``
(``csl-ros detect``'s output folder). Two candidates for one frame are an error naming both.
Labels, anywhere under ``--labels``: ``<fid>_labels_semantic.png`` (SMIYC: 0, 1, else void),
``<fid>_gtCoarse_labelIds.png`` (LostAndFound ids, mapped), ``<fid>_fishy-labels.png`` or
``<NNNN>_<fid>_labels.png`` (Fishyscapes, benchmark layout or public zip). Score maps narrower than
their label are upsampled bilinearly (the benchmark's rule); any other size mismatch is an error.
Prints the summary and the path of the JSON it wrote (``./metrics.json`` unless ``--out`` says
otherwise).

Exit status: 0 when every labelled frame was scored; 1, with the reason, when no frame could be
scored or when labelled frames have no score map (``--allow-dropped`` accepts that); the counts and
the missing frames are written to ``--out`` either way. 2 on bad input (one line naming the file or
frame).

    csl-ros metrics --scores my_method/ --labels dataset_ObstacleTrack/ --track obstacle --out m.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from csl_ros.cli import add_command
from csl_ros.data.loaders import LABEL_SUFFIXES, LAF_IMAGE_SUFFIX, laf_select, parse_label_name, read_label
from csl_ros.eval.metrics import TRACKS, evaluate, summary_lines


def register(subparsers) -> None:
    p = add_command(subparsers, "metrics", "SMIYC/LostAndFound metrics of saved score maps (.npy) vs label PNGs",
                    __doc__)
    p.add_argument("--scores", required=True, type=Path,
                   help="folder of score maps: <fid>.npy, <label file stem>.npy or csl-ros detect's "
                        "<image stem>_anomaly.npy (searched recursively)")
    p.add_argument("--labels", required=True, type=Path,
                   help="folder of label PNGs: <fid>_labels_semantic.png (SMIYC), "
                        "<fid>_gtCoarse_labelIds.png (LostAndFound), <fid>_fishy-labels.png or "
                        "<NNNN>_<fid>_labels.png (Fishyscapes) (searched recursively)")
    p.add_argument("--track", required=True, choices=tuple(TRACKS),
                   help="component size filters (predicted / ground-truth minimum, px): anomaly and "
                        "fishyscapes 500/100 (the benchmark scores FishyLAFAnomaly-val so), obstacle "
                        "and laf 50/10")
    p.add_argument("--protocol", default="official", choices=("official", "exact"),
                   help="official: the leaderboard's binned curve; exact: every distinct float16 score")
    p.add_argument("--threshold", type=float, default=None,
                   help="fixed component threshold on the score, score > T (default: the benchmark-reported "
                        "best-F1 threshold of the pixel curve)")
    p.add_argument("--laf-subset", default="all", choices=("all", "valid", "noknown"),
                   help="LostAndFound frame selection on gtCoarse labels of the complete split: "
                        "valid = the benchmark's LostAndFound-test (1186), noknown = NoKnown (1043)")
    p.add_argument("--laf-split", default="test", choices=("test", "train"),
                   help="the LostAndFound split the gtCoarse labels belong to (for --laf-subset)")
    p.add_argument("--allow-dropped", action="store_true",
                   help="exit 0 when some labelled frames have no score map: the others are scored and "
                        "the missing ones listed in the JSON (without it: the same, but exit 1)")
    p.add_argument("--out", type=Path, default=Path("metrics.json"),
                   help="output JSON file (default: metrics.json in the current folder); its path is printed")
    p.add_argument("--no-curve", action="store_true", help="leave the PR/ROC curve out of the JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def find_labels(labels_dir: Path) -> dict[str, tuple[Path, str]]:
    """{fid: (label path, kind)} for every benchmark label file under ``labels_dir``."""
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"labels folder not found: {labels_dir}")
    found: dict[str, tuple[Path, str]] = {}
    for p in sorted(labels_dir.rglob("*.png")):
        parsed = parse_label_name(p.name)
        if parsed is None:
            continue
        fid, kind = parsed
        if fid in found:
            raise ValueError(f"two label files for frame {fid}: {found[fid][0]} and {p}")
        found[fid] = (p, kind)
    if not found:
        raise FileNotFoundError(f"no label files in {labels_dir} (looked for "
                                f"{', '.join('*' + s for s in LABEL_SUFFIXES)}, NNNN_*_labels.png)")
    return found


def find_scores(scores_dir: Path) -> dict[str, Path]:
    """{file stem: path} of every ``.npy`` under ``scores_dir``."""
    if not scores_dir.is_dir():
        raise FileNotFoundError(f"scores folder not found: {scores_dir}")
    found: dict[str, Path] = {}
    for p in sorted(scores_dir.rglob("*.npy")):
        if p.stem in found:
            raise ValueError(f"two score files named {p.name}: {found[p.stem]} and {p}")
        found[p.stem] = p
    return found


def score_name_candidates(fid: str, label_path: Path) -> list[str]:
    """The file stems a score map of frame ``fid`` may have, in the three naming styles."""
    names = [fid, label_path.name[:-len(label_path.suffix)],      # ours; the official tooling's
             f"{fid}_anomaly", f"{fid}{LAF_IMAGE_SUFFIX}_anomaly"]  # csl-ros detect's
    return list(dict.fromkeys(names))


def match_scores(labels: dict[str, tuple[Path, str]],
                 scores: dict[str, Path]) -> tuple[dict[str, Path], list[str]]:
    """({fid: score path}, [labelled fids without a map]); two candidates for one frame are an error."""
    matched: dict[str, Path] = {}
    missing: list[str] = []
    for fid in sorted(labels):
        names = score_name_candidates(fid, labels[fid][0])
        hits = [scores[n] for n in names if n in scores]
        if len(hits) > 1:
            raise ValueError(f"two score maps for frame {fid}: {hits[0]} and {hits[1]}; keep one")
        if hits:
            matched[fid] = hits[0]
        else:
            missing.append(fid)
    return matched, missing


def missing_message(missing: list[str], n_labelled: int, scores_dir: Path) -> str:
    shown = ", ".join(f"{f}.npy" for f in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    return (f"{len(missing)} of {n_labelled} labelled frames have no score map in {scores_dir} "
            f"(<fid>.npy, <label stem>.npy or <stem>_anomaly.npy): {shown}{more}")


def load_scores(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"cannot read score map {path}: {exc}") from exc


def run(args) -> int:
    labels = find_labels(args.labels)
    if args.laf_subset != "all":
        if any(kind != "laf" for _, kind in labels.values()):
            raise ValueError("--laf-subset needs LostAndFound *_gtCoarse_labelIds.png labels only")
        keep = laf_select(list(labels), args.laf_split, args.laf_subset, str(args.labels))
        labels = {f: labels[f] for f in keep}
    scores = find_scores(args.scores)
    matched, missing = match_scores(labels, scores)
    fids = sorted(matched)
    used = {p.stem for p in matched.values()}
    unused = sorted(set(scores) - used)

    def frames():
        for fid in fids:
            yield fid, load_scores(matched[fid]), read_label(*labels[fid])

    result = evaluate(frames, track=args.track, protocol=args.protocol,
                      component_threshold=args.threshold, progress=not args.quiet,
                      total=len(fids))
    out = result.to_dict(include_curve=not args.no_curve)
    n_scored = result.pixel.n_frames - result.pixel.n_frames_void
    out["inputs"] = {"scores": str(args.scores), "labels": str(args.labels),
                     "n_frames": len(labels), "n_frames_scored": n_scored,
                     "n_frames_void": result.pixel.n_frames_void, "n_frames_dropped": len(missing),
                     "dropped_frames": missing, "laf_subset": args.laf_subset,
                     "unused_score_files": len(unused)}
    failures = []
    if n_scored == 0:
        failures.append(f"no frame was scored ({len(labels)} labelled, {len(missing)} without a score "
                        f"map, {result.pixel.n_frames_void} entirely void)")
    if missing:
        out["notes"].append(missing_message(missing, len(labels), args.scores))
        if not args.allow_dropped:
            failures.append(f"{missing_message(missing, len(labels), args.scores)}; the metrics cover "
                            f"the other {len(fids)}; pass --allow-dropped to accept that")
    if unused:
        out["notes"].append(f"{len(unused)} score file(s) without a label were ignored, e.g. "
                            f"{scores[unused[0]].name}")
    out["failures"] = failures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print("\n".join(summary_lines(out, frames=len(fids))))
    print(f"wrote {args.out.resolve()}")
    for failure in failures:
        print(f"csl-ros metrics: error: {failure}", file=sys.stderr)
    return 1 if failures else 0
