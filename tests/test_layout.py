"""The plan of the house: every package of ``pathmm_pipeline`` imports only from the floors below it.

The floors are listed here, once, bottom up; the README's picture draws the same list. The test reads every
module's imports (lazy ones inside functions too) and fails on an import that runs sideways or upward, on a
cycle between modules, and on a private name taken from another module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pathmm_pipeline"

#: bottom up; a package may import its own modules and those of any lower floor, never a peer's or a higher one
FLOORS: list[tuple[str, ...]] = [
    ("core", "stats"),           # atomic writes, errors, settings, provenance, stores, registry | metrics, KM
    ("encoders", "genomics"),    # patch / slide / text encoders | expression and pathways
    ("reports", "preprocess"),   # the text modality | slides, segmentation, tiling, features, QC
    ("models", "demo"),          # contracts, registry, losses, checkpoints, one file per model | demo cohorts
    ("cohort",),                 # the multimodal patient dataset, splits, inner splits
    ("tasks",),                  # one registered class per task kind
    ("evaluation",),             # predict, evaluate a trained fold, the HTML report
    ("training",),               # the engine, fine-tuning, pretraining, self-teaching
    ("downstream", "interpret"), # one registered function per downstream evaluation | heatmaps
    ("plan",),                   # what the .smk files import: runs, inputs, settings JSON (torch-free)
    ("stages",),                 # one function per rule
    ("cli",),                    # one subcommand per rule
]
FLOOR_OF = {pkg: i for i, names in enumerate(FLOORS) for pkg in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken, line) for every pathmm import of a module, lazy ones included."""
    is_pkg = path.name == "__init__.py"
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "pathmm_pipeline":
                found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "pathmm_pipeline"]
    return found


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = _modules()


def test_every_package_has_a_floor():
    packages = {_package(m) for m in MODULES} - {None}
    assert packages <= set(FLOOR_OF), f"packages without a floor in FLOORS: {sorted(packages - set(FLOOR_OF))}"


def test_imports_run_only_downward():
    wrong = []
    for name, path in MODULES.items():
        own = _package(name)
        for target, _names, line in _imports(name, path):
            other = _package(target)
            if own is None or other is None or other == own:
                continue
            if FLOOR_OF[other] >= FLOOR_OF[own]:
                kind = "sideways" if FLOOR_OF[other] == FLOOR_OF[own] else "upward"
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} ({kind}: {own} is on "
                             f"floor {FLOOR_OF[own] + 1}, {other} on {FLOOR_OF[other] + 1})")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_a_module():
    wrong = [f"{path.relative_to(PACKAGE.parent)}:{line} takes {n} from {target}"
             for name, path in MODULES.items() for target, names, line in _imports(name, path)
             for n in names if n.startswith("_") and not n.startswith("__") and target != name]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = set()
        for target, names, _ in _imports(name, path):
            # ``from package import module`` is an edge to the module
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            edges.update(subs or ([target] if target in MODULES else []))
        graph[name] = edges - {name}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(nxt_ := node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [nxt_, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package's face importing its own modules, which import siblings through it, is not a loop of work
    real = [c for c in cycles if not all(MODULES[m].name == "__init__.py" or m == c[0] for m in c[1:-1])]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize("module", ["pathmm_pipeline.plan.runs", "pathmm_pipeline.plan.resources"])
def test_the_planning_floor_imports_no_torch(module):
    code = (f"import sys, {module}; bad = sorted(m for m in ('torch', 'timm', 'transformers', 'zarr') "
            "if m in sys.modules); print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} imports {out}: the Snakefile's parse must stay torch-free"


def _calls(attribute_names: set[str]) -> list[str]:
    found = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            on_engine = isinstance(node, ast.Attribute) and (
                (isinstance(node.value, ast.Name) and node.value.id == "engine")
                or (isinstance(node.value, ast.Attribute) and node.value.attr == "engine"))
            if isinstance(node, ast.Attribute) and node.attr in attribute_names and not on_engine:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} .{node.attr}")
    return found


def test_one_training_engine():
    """Only the engine builds an optimiser, steps it, clips or back-propagates: every loop runs on it."""
    outside = [c for c in _calls({"AdamW", "RAdam", "SGD", "Adam", "clip_grad_norm_", "backward", "LambdaLR"})
               if not c.startswith("pathmm_pipeline/training/engine.py")]
    assert not outside, "optimisation outside pathmm_pipeline/training/engine.py:\n" + "\n".join(outside)


def test_one_registry_class():
    """Every registry of the library is a core.registry.Registry: no module keeps its own name -> entry dict."""
    own = []
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            target = node.target if isinstance(node, ast.AnnAssign) else None
            if (isinstance(target, ast.Name) and "REGISTRY" in target.id.upper()
                    and name != "pathmm_pipeline.core.registry"):
                own.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {target.id}")
    assert not own, "\n".join(own)
