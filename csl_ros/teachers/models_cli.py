"""``csl-ros models {list,fetch,import,verify}``: public Cityscapes networks as teachers / regions.

  list               the curated models (published Cityscapes accuracy, licence) and what is installed
  fetch NAME|REPO    download through huggingface_hub (progress bar) into the Hugging Face cache and
                     record the SHA-256 of every weight file; then teacher_path: hf:<repo>
  import DIR         the same for a folder copied from another machine (air-gapped cars)
  verify [NAME|DIR]  re-check the recorded hashes (all installed models when none is given)

Every load of a fetched or imported model checks the hashes too; a changed file is refused with its
name. Published numbers are the authors' (list names the source of each), not measured by csl_ros.
"""
from __future__ import annotations

from csl_ros.cli import add_command


LIST_DOC = """csl-ros models list: the curated public Cityscapes models and the installed ones.

Shows backbone, task, parameters, the Cityscapes val accuracy their authors published (and where it
comes from), the licence of the model card, and where each installed model lies.
"""
FETCH_DOC = """csl-ros models fetch: download a model from the Hugging Face hub and record its hashes.

  csl-ros models fetch mask2former-swin-large-semantic
  csl-ros models fetch nvidia/segformer-b2-finetuned-cityscapes-1024-1024@main

The model lands in the Hugging Face cache (teacher_path: hf:<repo>); a model whose weights are only a
PyTorch pickle is converted to safetensors, read tensor-only. Without network: one error line.
"""
IMPORT_DOC = """csl-ros models import: record the hashes of a model folder copied from another machine.

For air-gapped cars: copy the folder (config.json, preprocessor_config.json, weights) from a machine
that ran fetch, then import it here; teacher_path is the folder.
"""
VERIFY_DOC = """csl-ros models verify: re-check the recorded SHA-256 of installed models.

Exit status 1 when any file changed, naming the file.
"""


def register(subparsers) -> None:
    p = add_command(subparsers, "models", "public Cityscapes teachers: list, fetch, import, verify", __doc__)
    sub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    sub.required = True
    add_command(sub, "list", "curated models and installed ones", LIST_DOC).set_defaults(func=run_list)
    f = add_command(sub, "fetch", "download a model from the Hugging Face hub and record its hashes",
                    FETCH_DOC)
    f.add_argument("name", help="a name from csl-ros models list, or a hub repo id owner/name[@revision]")
    f.add_argument("--revision", default=None, help="branch, tag or commit of the repo (default: main)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=run_fetch)
    i = add_command(sub, "import", "record the hashes of a model folder copied from elsewhere", IMPORT_DOC)
    i.add_argument("dir", help="model folder with config.json, preprocessor_config.json and the weights")
    i.add_argument("--name", default=None, help="name of the model in the index (default: the folder name)")
    i.set_defaults(func=run_import)
    v = add_command(sub, "verify", "re-check the recorded SHA-256 of installed models", VERIFY_DOC)
    v.add_argument("names", nargs="*", help="installed model names or model folders (default: every "
                                            "installed model)")
    v.set_defaults(func=run_verify)


def run_list(args) -> int:
    # deferred: torch; csl-ros imports every command module to build its parser
    from csl_ros.teachers.real_models import CATALOG, installed

    have = installed()
    print(f"{'name':28s} {'backbone':9s} {'task':9s} {'params':>7s} {'Cityscapes val':15s} licence / installed")
    for e in CATALOG.values():
        params = f"{e.params_m:.1f}M" if e.params_m else "?"
        where = have.get(e.name)
        print(f"{e.name:28s} {e.backbone:9s} {e.task:9s} {params:>7s} {e.metric:15s} {e.licence}")
        print(f"{'':28s} {('hf:' + e.repo) if e.repo else '(no transformers checkpoint on the hub)'}"
              f"{f'  -> installed at {where}' if where else ''}")
    others = {k: v for k, v in have.items() if k not in CATALOG}
    for name, where in sorted(others.items()):
        print(f"{name:28s} (imported) {where}")
    print("published numbers from: " + "; ".join(sorted({e.source for e in CATALOG.values()})))
    return 0


def _print_record(directory, record) -> None:
    for name, digest in sorted(record["files"].items()):
        print(f"  {digest}  {name}")
    print(f"hashes recorded in {directory}/csl_ros.sha256.json")


def run_fetch(args) -> int:
    # deferred: torch; csl-ros imports every command module to build its parser
    from csl_ros.teachers.real_models import fetch_model

    directory, record = fetch_model(args.name, args.revision, progress=not args.quiet)
    print(f"fetched {args.name} to {directory}")
    _print_record(directory, record)
    return 0


def run_import(args) -> int:
    # deferred: torch; csl-ros imports every command module to build its parser
    from csl_ros.teachers.real_models import import_model

    name, record = import_model(args.dir, args.name)
    print(f"imported {args.dir} as {name}")
    _print_record(args.dir, record)
    return 0


def run_verify(args) -> int:
    # deferred: torch; csl-ros imports every command module to build its parser
    import sys

    from csl_ros.teachers.real_models import installed, verify_model

    names = args.names or sorted(installed())
    if not names:
        print("no installed models (csl-ros models fetch / import)")
        return 0
    bad = 0
    for name in names:
        try:
            directory, record = verify_model(name)
            print(f"ok      {name}: {len(record['files'])} file(s) match ({directory})")
        except (ValueError, OSError) as exc:
            bad += 1
            print(f"FAILED  {name}: {exc}", file=sys.stderr)
    return 1 if bad else 0
