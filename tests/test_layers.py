"""The package's layers: dependencies point one way (README "Reading the code").

Every `ebt` import of every module, at the top or inside a function, goes to a module of the
same or a lower layer; the import graph has no cycle; `think.py` knows nothing of the package
but its errors and the options it descends by; only the command lines (`cli.py`; `demo.py`, `make demo`'s own entry point;
`harness.py`, lm-evaluation-harness's model type and `python -m ebt.harness`) see argparse.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# From the bottom. A module may import its own layer or below; a package's __init__ counts as
# the layer of its name.
LAYERS = [
    ["ebt.errors", "ebt.checks", "ebt.packages", "ebt.config_versions"],
    ["ebt.options", "ebt.config", "ebt.files", "ebt.presets", "ebt.distributed", "ebt.precision", "ebt.compiled",
     "ebt.memory"],
    ["ebt.checkpoint", "ebt.safe_shards", "ebt.train_state", "ebt.schedule", "ebt.think", "ebt.data", "ebt.data.probes", "ebt.data.folder", "ebt.data.formats", "ebt.data.corpus", "ebt.data.tokenizers",
     "ebt.data.batches", "ebt.data.tokens", "ebt.data.prepared", "ebt.data.images", "ebt.data.video", "ebt.plots",
     "ebt.data.pairs", "ebt.data.downstream", "ebt.data.downstream_install"],
    ["ebt.nn", "ebt.decoding", "ebt.best_of", "ebt.tasks", "ebt.tasks.text", "ebt.tasks.image", "ebt.tasks.video"],  # blocks, decoding, task objects
    ["ebt.energy", "ebt.baselines", "ebt.baselines.transformer", "ebt.baselines.diffusion", "ebt.baselines.dit",
     "ebt.models", "ebt.image_protocol"],  # the models, handed a task; how the image models are scored
    ["ebt.objectives", "ebt.evaluate", "ebt.generate", "ebt.verifier"],
    ["ebt.rundata", "ebt.rundata.fingerprint", "ebt.rundata.text", "ebt.rundata.image", "ebt.rundata.video"],
    ["ebt.hub"],  # Hub ids, exported run directories, model cards
    ["ebt.train", "ebt.rundir", "ebt.runs", "ebt.parallel", "ebt.sharded", "ebt.trackers"],
    ["ebt.suite", "ebt.denoise", "ebt.demo_images", "ebt.bench", "ebt.scaling", "ebt.scaling.fit", "ebt.scaling.sweep",
     "ebt.scaling.running", "ebt.scaling.curves", "ebt.scaling.worker", "ebt.scaling.gains"],
    ["ebt.commands", "ebt.commands.common", "ebt.commands.train", "ebt.commands.evaluation",
     "ebt.commands.generation", "ebt.commands.images", "ebt.commands.data", "ebt.commands.bench",
     "ebt.commands.scale"],  # typed arguments, never an argparse Namespace
    ["ebt.cli", "ebt.demo", "ebt.harness", "ebt"],  # the command lines and the package's front door
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
COMMAND_LINE = {"ebt.cli", "ebt.demo", "ebt.harness"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "ebt").rglob("*.py"))}


def imports(name: str, source: str | None = None) -> set[str]:
    """Every module `name` imports (its file, or `source`), anywhere in its body."""
    tree = ast.parse(MODULES[name].read_text() if source is None else source)
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
            found |= submodules
            if len(submodules) < len(node.names):  # names defined in `base` itself
                found.add(base)
    return found


def ebt_imports(name: str, source: str | None = None) -> set[str]:
    return {m for m in imports(name, source) if m in MODULES and m != name}


def upward(name: str, source: str | None = None) -> list[str]:
    return sorted(m for m in ebt_imports(name, source) if LAYER[m] > LAYER[name])


def test_every_module_has_a_layer() -> None:
    assert set(MODULES) == set(LAYER), f"unplaced: {set(MODULES) - set(LAYER)}; gone: {set(LAYER) - set(MODULES)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    found = upward(name)
    assert not found, f"{name} (layer {LAYER[name]}) imports higher layers: {found}"


def test_the_import_graph_has_no_cycle() -> None:
    graph = {name: ebt_imports(name) for name in MODULES}
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " → ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_think_knows_nothing_of_the_package_but_its_errors_and_options() -> None:
    assert ebt_imports("ebt.think") <= {"ebt.errors", "ebt.options"}
    assert ebt_imports("ebt.options") <= {"ebt.errors", "ebt.checks"}


def test_only_the_command_line_sees_argparse() -> None:
    users = sorted(n for n in MODULES if "argparse" in imports(n))
    assert set(users) <= COMMAND_LINE, f"argparse below the command line: {set(users) - COMMAND_LINE}"
    below = [n for n in MODULES if n not in COMMAND_LINE and "Namespace" in MODULES[n].read_text()]
    assert not below, f"modules below the command line mention an argparse Namespace: {below}"


def test_the_layer_check_catches_upward_imports() -> None:
    """The checker itself: imports from the task objects up to the trainer, in any form, are found."""
    assert upward("ebt.tasks.text", "def f():\n    from ebt.train import train\n") == ["ebt.train"]
    assert upward("ebt.tasks.text", "from ebt import runs\n") == ["ebt.runs"]
    assert upward("ebt.tasks.text", "from .. import commands\n") == ["ebt.commands"]
    assert upward("ebt.tasks.text", "import ebt.cli\n") == ["ebt.cli"]
    assert upward("ebt.tasks.text", "from ebt.think import think\nfrom . import image\n") == []
