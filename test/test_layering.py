"""The package's import graph, read from the source (every import, at the top of a module or inside a
function): no cycle, and no import against the layers of docs/architecture.md.

    util  <-  model  <-  base  <-  teachers  <-  pipeline  <-  training, eval  <-  ros  <-  commands

``util`` are generic mechanisms that know nothing of csl_ros (the registry class, the settings
coercion, and every ``registry.py``, which names its entries by lazy references); ``base`` is the
ROS-free application core (config.py, shipped.py, image_codec.py, visualize.py, data/); ``commands`` are the command-line modules (cli.py, __main__.py, demo.py, ``*_cli.py``, a
package's ``cli.py``, ros/csl_node.py). Nothing below ``ros`` imports rclpy, launch or ROS messages.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "csl_ros"

LAYERS = ("util", "model", "base", "teachers", "pipeline", "training", "eval", "ros", "commands")
# What each layer may import (its own layer included). training and eval sit side by side.
ALLOWED = {
    "util": {"util"},
    "model": {"model", "util"},
    "base": {"base", "model", "util"},
    "teachers": {"teachers", "base", "model", "util"},
    "pipeline": {"pipeline", "teachers", "base", "model", "util"},
    "training": {"training", "pipeline", "teachers", "base", "model", "util"},
    "eval": {"eval", "pipeline", "teachers", "base", "model", "util"},
    "ros": {"ros", "eval", "pipeline", "teachers", "base", "model", "util"},
    "commands": set(LAYERS),
}
UTIL_MODULES = {"csl_ros.registry", "csl_ros.settings"}
# (ament_index_python, which shipped.py tries for an installed share/ folder, is a plain file lookup.)
ROS_PACKAGES = {"rclpy", "launch", "launch_ros", "rcl_interfaces", "sensor_msgs",
                "std_msgs", "geometry_msgs", "visualization_msgs", "diagnostic_msgs", "lifecycle_msgs",
                "builtin_interfaces"}
ROS_FREE_LAYERS = {"util", "model", "base", "teachers", "pipeline", "training", "eval"}
COMMAND_MODULES = {"csl_ros.cli", "csl_ros.__main__", "csl_ros.demo", "csl_ros.ros.csl_node"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def layer_of(module: str) -> str:
    last = module.rsplit(".", 1)[-1]
    if module in COMMAND_MODULES or last.endswith("_cli") or (last == "cli" and module != "csl_ros.cli"):
        return "commands"
    if module in UTIL_MODULES or last == "registry":
        return "util"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("model", "teachers", "pipeline", "training", "eval", "ros"):
        return parts[1]
    return "base"   # csl_ros, config, shipped, image_codec, visualize, data.*


def imports_of(path: Path, module: str, modules: dict) -> list[tuple[str, int, bool]]:
    """(imported name, line, at module top) for every import statement in the file; csl_ros names are
    resolved to the module imported (``from csl_ros.eval import bag`` -> ``csl_ros.eval.bag``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = set(map(id, tree.body))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the package of this module
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno, id(node) in top))
    return found


def import_graph(implicit: bool = True) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    """(csl_ros module -> csl_ros modules it imports, module -> its imports of ROS packages).
    ``implicit``: also the package ``__init__`` modules an import runs (for cycles; the layers are
    checked on the imports as written)."""
    modules = all_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    ros_imports: dict[str, list[tuple[str, int]]] = {}
    for module, path in modules.items():
        for name, line, _ in imports_of(path, module, modules):
            root = name.split(".")[0]
            if root in ROS_PACKAGES:
                ros_imports.setdefault(module, []).append((name, line))
            if root != "csl_ros":
                continue
            target = name
            while target not in modules:   # an attribute of a module: the module
                target = target.rsplit(".", 1)[0]
            graph[module].add(target)
            # importing a.b.c runs the __init__ of a.b first, unless the importer is inside a.b
            parent = target.rsplit(".", 1)[0]
            while implicit and "." in parent and not module.startswith(parent + ".") and module != parent:
                graph[module].add(parent)
                parent = parent.rsplit(".", 1)[0]
    for module in graph:
        graph[module].discard(module)
    return graph, ros_imports


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first == last), or None."""
    state: dict[str, int] = {}   # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})"
            for m, targets in sorted(graph.items()) for t in sorted(targets)
            if layer_of(t) not in ALLOWED[layer_of(m)]]


# --- the package ------------------------------------------------------------------------------------------
def test_no_import_cycle():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_follow_the_layers():
    graph, _ = import_graph(implicit=False)
    assert layer_violations(graph) == []


def test_nothing_below_ros_imports_ros():
    _, ros_imports = import_graph()
    leaks = [f"{m}:{line} imports {name}" for m, found in sorted(ros_imports.items()) for name, line in found
             if layer_of(m) in ROS_FREE_LAYERS]
    assert leaks == []


def test_eval_does_not_import_commands_or_ros():
    graph, _ = import_graph(implicit=False)
    bad = [(m, t) for m, ts in graph.items() if layer_of(m) == "eval" for t in ts
           if layer_of(t) in ("ros", "commands")]
    assert bad == []


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(n is None or (isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception"))
               for n in names)


def unexplained_deferred_imports(path: Path) -> list[int]:
    """Lines of imports inside functions or classes that give no reason: an import there needs a
    comment (on its line or the line above, or on the first import of its group), or to be the first
    statement of a try block that catches its ImportError (an optional dependency by construction)."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    outer = set()
    for node in tree.body:   # imports in module-level try/if blocks count as top-level ones
        outer.update(map(id, ast.walk(node)) if isinstance(node, (ast.Try, ast.If)) else {id(node)})
    in_try = {id(m) for n in ast.walk(tree) if isinstance(n, ast.Try) and id(n) not in outer
              and any(_catches_import_error(h) for h in n.handlers) for m in ast.walk(n.body[0])}
    explained_end: set[int] = set()   # last line of each import that is explained
    missing = []
    deferred = sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in outer),
                      key=lambda n: n.lineno)
    for node in deferred:
        before = node.lineno - 2
        while before >= 0 and not lines[before].strip():
            before -= 1
        reason = ("#" in lines[node.lineno - 1] or (before >= 0 and lines[before].strip().startswith("#"))
                  or id(node) in in_try or (before + 1) in explained_end)
        if reason:
            explained_end.add(node.end_lineno)
        else:
            missing.append(node.lineno)
    return missing


def test_imports_inside_functions_say_why():
    found = {m: unexplained_deferred_imports(p) for m, p in all_modules().items()}
    assert {m: lines for m, lines in found.items() if lines} == {}


# --- the checker itself: it finds what it is meant to find ----------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A csl_ros-shaped package in tmp_path, checked by the same functions."""
    pkg = tmp_path / "csl_ros"
    monkeypatch.setitem(globals(), "PACKAGE_DIR", pkg)
    _write(pkg, {"__init__.py": "", "config.py": "", "model/__init__.py": "", "pipeline/__init__.py": "",
                 "eval/__init__.py": "", "ros/__init__.py": ""})
    return pkg


def test_checker_finds_a_cycle_hidden_in_functions(toy_package):
    _write(toy_package, {"eval/a.py": "def f():\n    from csl_ros.eval import b\n",
                         "eval/b.py": "def g():\n    import csl_ros.eval.a\n"})
    graph, _ = import_graph()
    assert find_cycle(graph) in (["csl_ros.eval.a", "csl_ros.eval.b", "csl_ros.eval.a"],
                                 ["csl_ros.eval.b", "csl_ros.eval.a", "csl_ros.eval.b"])


def test_checker_finds_an_unexplained_deferred_import(toy_package):
    _write(toy_package, {"eval/lazy.py": "import os\n\n\ndef f():\n    import json\n\n\n"
                                         "def g():\n    import rclpy  # optional: the ros extra\n    import launch\n\n\n"
                                         "def h():\n    try:\n        import PIL\n    except ImportError:\n        pass\n"})
    assert unexplained_deferred_imports(toy_package / "eval" / "lazy.py") == [5]


def test_checker_finds_imports_against_the_layers(toy_package):
    _write(toy_package, {"model/net.py": "from ..pipeline import detector\n",
                         "pipeline/detector.py": "",
                         "eval/live.py": "def run():\n    import rclpy\n    from csl_ros.ros import node\n",
                         "ros/node.py": "import rclpy\n"})
    graph, ros_imports = import_graph(implicit=False)
    assert layer_violations(graph) == ["csl_ros.eval.live (eval) imports csl_ros.ros.node (ros)",
                                       "csl_ros.model.net (model) imports csl_ros.pipeline.detector (pipeline)"]
    assert ros_imports["csl_ros.eval.live"] == [("rclpy", 2)] and "csl_ros.ros.node" in ros_imports
    assert find_cycle(graph) is None


# --- what a process loads: the extras match the layers ---------------------------------------------------------
EVAL_EXTRA = ("matplotlib", "imageio", "imageio_ffmpeg", "rosbags")   # setup.py extras_require["eval"]


def _modules_loaded_by(code: str) -> set[str]:
    """The top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE_DIR.parent, env={**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent)})
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_csl_ros_starts_without_torch_ros_or_the_eval_extra():
    """Every subcommand's parser is built at start: its module loads its heavy dependencies only when it runs."""
    loaded = _modules_loaded_by("from csl_ros.cli import build_parser\nbuild_parser()")
    assert loaded.isdisjoint({"torch", "rclpy", *EVAL_EXTRA}), sorted(loaded & {"torch", "rclpy", *EVAL_EXTRA})


def test_the_node_runs_without_the_eval_extra():
    pytest.importorskip("rclpy")
    loaded = _modules_loaded_by("import csl_ros.ros.csl_node")
    assert "rclpy" in loaded and "torch" in loaded   # the probe did load the node
    assert loaded.isdisjoint(EVAL_EXTRA), sorted(loaded & set(EVAL_EXTRA))


def test_setup_py_eval_extra_is_what_the_probe_checks():
    setup = (PACKAGE_DIR.parent / "setup.py").read_text()
    extra = setup[setup.index('"eval": ['):]
    extra = extra[: extra.index("]")]
    names = {n.split(">")[0].split("=")[0].replace("-", "_") for n in re.findall(r'"([^"]+)"', extra)[1:]}
    assert names == set(EVAL_EXTRA)
    install_requires = setup[setup.index("install_requires=["):setup.index("extras_require")]
    assert not any(f'"{n.replace("_", "-")}' in install_requires for n in EVAL_EXTRA)
