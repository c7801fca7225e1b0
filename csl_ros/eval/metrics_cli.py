"""``csl-ros metrics``: score saved score maps against benchmark label PNGs with the SMIYC protocol.

Scores: one float ``.npy`` per frame, ``<fid>.npy`` (higher = more anomalous), anywhere under
``--scores``. Labels: ``<fid>_labels_semantic.png`` (SMIYC: 0, 1, else void) or
``<fid>_gtCoarse_labelIds.png`` (LostAndFound ids, mapped), anywhere under ``--labels``. Prints the
summary and the path of the JSON it wrote (``./metrics.json`` unless ``--out`` says otherwise).

    csl-ros metrics --scores my_method/ --labels dataset_ObstacleTrack/ --track obstacle --out m.json
"""
from __future__ import annotations

import json
from pathlib import Path

from csl_ros.cli import add_command

LABEL_KINDS = {
    "_labels_semantic.png": "smiyc",
    "_gtCoarse_labelIds.png": "laf",
}


def register(subparsers) -> None:
    p = add_command(subparsers, "metrics", "SMIYC/LostAndFound metrics of saved score maps (.npy) vs label PNGs",
                    __doc__)
    p.add_argument("--scores", required=True, type=Path, help="folder of <fid>.npy score maps")
    p.add_argument("--labels", required=True, type=Path,
                   help="folder of <fid>_labels_semantic.png or <fid>_gtCoarse_labelIds.png")
    p.add_argument("--track", required=True, choices=("anomaly", "obstacle", "laf"),
                   help="component size filters: anomaly 500/100 px, obstacle and laf 50/10 px")
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
    p.add_argument("--out", type=Path, default=Path("metrics.json"),
                   help="output JSON file (default: metrics.json in the current folder); its path is printed")
    p.add_argument("--no-curve", action="store_true", help="leave the PR/ROC curve out of the JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def find_labels(labels_dir: Path) -> dict[str, tuple[Path, str]]:
    """{fid: (label path, kind)} for every known label file under ``labels_dir``."""
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"labels folder not found: {labels_dir}")
    found: dict[str, tuple[Path, str]] = {}
    for suffix, kind in LABEL_KINDS.items():
        for p in sorted(labels_dir.rglob(f"*{suffix}")):
            fid = p.name[:-len(suffix)]
            if fid in found:
                raise ValueError(f"two label files for frame {fid}: {found[fid][0]} and {p}")
            found[fid] = (p, kind)
    if not found:
        raise FileNotFoundError(f"no label files in {labels_dir} (looked for "
                                f"{', '.join('*' + s for s in LABEL_KINDS)})")
    return found


def find_scores(scores_dir: Path) -> dict[str, Path]:
    if not scores_dir.is_dir():
        raise FileNotFoundError(f"scores folder not found: {scores_dir}")
    found: dict[str, Path] = {}
    for p in sorted(scores_dir.rglob("*.npy")):
        if p.stem in found:
            raise ValueError(f"two score files for frame {p.stem}: {found[p.stem]} and {p}")
        found[p.stem] = p
    return found


def load_scores(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"cannot read score map {path}: {exc}") from exc


def load_label(path: Path, kind: str):
    from csl_ros.data.loaders import map_laf_label, map_smiyc_label, read_label_png

    raw = read_label_png(path)
    return map_laf_label(raw) if kind == "laf" else map_smiyc_label(raw)


def run(args) -> int:
    from csl_ros.data.loaders import laf_select
    from csl_ros.eval.metrics import evaluate, summary_lines

    labels = find_labels(args.labels)
    if args.laf_subset != "all":
        if any(kind != "laf" for _, kind in labels.values()):
            raise ValueError("--laf-subset needs LostAndFound *_gtCoarse_labelIds.png labels only")
        keep = laf_select(list(labels), args.laf_split, args.laf_subset, str(args.labels))
        labels = {f: labels[f] for f in keep}
    scores = find_scores(args.scores)
    fids = sorted(labels)
    missing = [f for f in fids if f not in scores]
    if missing:
        shown = ", ".join(f"{f}.npy" for f in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise FileNotFoundError(f"{len(missing)} of {len(fids)} labelled frames have no score map "
                                f"in {args.scores}: {shown}{more}")
    unused = sorted(set(scores) - set(labels))

    def frames():
        for fid in fids:
            yield fid, load_scores(scores[fid]), load_label(*labels[fid])

    result = evaluate(frames, track=args.track, protocol=args.protocol,
                      component_threshold=args.threshold, progress=not args.quiet,
                      total=len(fids))
    out = result.to_dict(include_curve=not args.no_curve)
    out["inputs"] = {"scores": str(args.scores), "labels": str(args.labels),
                     "n_frames": len(fids), "laf_subset": args.laf_subset,
                     "unused_score_files": len(unused)}
    if unused:
        out["notes"].append(f"{len(unused)} score file(s) without a label were ignored, e.g. "
                            f"{unused[0]}.npy")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print("\n".join(summary_lines(out, frames=len(fids))))
    print(f"wrote {args.out.resolve()}")
    return 0
