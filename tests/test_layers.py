"""The layer rule (issue 20): the pure core imports nothing below it.

The core is the conversation engine (``pi_agent/engine/``) and the decisions
(``pi_agent/decide/``: the state machine, model, effects, the button's gestures and
policy, the LED picture). Its modules may import the standard library, except the
modules that do I/O or run things concurrently, and within pi-agent only other core
modules, :mod:`pi_agent.errors` and the package itself (its version). The drivers
(``audio/``, ``gpio/``, ``net/``, ``service/``), ``config`` and the daemon import the core,
never the reverse, so no import cycle can join the core to a driver.

Read with :mod:`ast` from the source, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from pi_agent.config import SessionSettings
from pi_agent.engine.settings import EngineSettings

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "pi_agent"
CORE_PACKAGES = ("pi_agent.engine", "pi_agent.decide")
CORE_ALSO = frozenset({"pi_agent", "pi_agent.errors"})  # pure leaves the core may import
FORBIDDEN_STDLIB = frozenset({"asyncio", "logging", "threading", "socket", "subprocess"})


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of pi_agent by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def in_core(name: str) -> bool:
    return any(name == pkg or name.startswith(pkg + ".") for pkg in CORE_PACKAGES)


def imported(source: str, module: str, *, is_package: bool = False,
             known: Mapping[str, object] | None = None) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``module``'s source imports, anywhere in it
    (also inside functions and ``if TYPE_CHECKING:``); relative imports resolved.
    ``from package import name`` gives ``package.name`` when that is a module of ``known``."""
    package = module if is_package else module.rpartition(".")[0]
    nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import | ast.ImportFrom)]
    for node in sorted(nodes, key=lambda n: n.lineno):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if known is not None and sub in known else base


def violations(source: str, module: str, *, is_package: bool = False,
               known: Mapping[str, object] | None = None) -> list[str]:
    """What a core module imports that the layer rule does not allow, one line each."""
    found = []
    for line, name in imported(source, module, is_package=is_package, known=known):
        top = name.partition(".")[0]
        if top == "pi_agent":
            if not (in_core(name) or name in CORE_ALSO):
                found.append(f"{module}:{line}: imports {name}, below the core")
        elif top in FORBIDDEN_STDLIB:
            found.append(f"{module}:{line}: imports {name}, which does I/O or runs things concurrently")
        elif top not in sys.stdlib_module_names:
            found.append(f"{module}:{line}: imports {name}, not the standard library")
    return list(dict.fromkeys(found))  # one line for `from x import a, b`


def graph() -> dict[str, set[str]]:
    """pi_agent's modules and the pi_agent modules each imports (a package counts as its ``__init__``)."""
    mods = modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = {target for _, target in imported(path.read_text(encoding="utf-8"), name,
                                                    is_package=path.name == "__init__.py", known=mods)}
        edges[name] = {t for t in targets if t in mods and t != name}
    return edges


def cycles_across(edges: Mapping[str, set[str]]) -> list[set[str]]:
    """Import cycles (strongly connected components) that hold both core and other modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in edges:
        if node not in index:
            visit(node)
    return [c for c in components
            if len(c) > 1 and any(map(in_core, c)) and not all(map(in_core, c))]


# --------------------------------------------------------------------------- the tree


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    mods = modules()
    core = {name: path for name, path in mods.items() if in_core(name)}
    assert {"pi_agent.decide.button", "pi_agent.decide.leds", "pi_agent.engine.settings"} <= set(core)
    found = [v for name, path in core.items()
             for v in violations(path.read_text(encoding="utf-8"), name, is_package=path.name == "__init__.py",
                                 known=mods)]
    assert found == []


def test_what_the_core_may_import_of_the_package_is_pure() -> None:
    mods = modules()
    for name in sorted(CORE_ALSO):
        path = mods[name]
        assert violations(path.read_text(encoding="utf-8"), name, is_package=path.name == "__init__.py",
                          known=mods) == []


def test_no_import_cycle_joins_the_core_to_a_driver() -> None:
    assert cycles_across(graph()) == []


def test_the_drivers_import_the_core() -> None:
    """The pure parts moved out of gpio/ and audio/ are imported from the core, not copied."""
    edges = graph()
    assert "pi_agent.decide.button" in edges["pi_agent.gpio.button"]
    assert "pi_agent.decide.leds" in edges["pi_agent.gpio.leds"]
    assert "pi_agent.decide.effects" in edges["pi_agent.audio.gate"]


def test_the_engines_settings_default_as_the_config_does() -> None:
    assert SessionSettings().engine_settings() == EngineSettings()


# --------------------------------------------------------------------------- the checker can fail

PLANTED = """\
from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from ..audio import gate
from .states import State
from ..errors import InternalError

if TYPE_CHECKING:
    from pi_agent.config import Settings


def later() -> None:
    import asyncio
    import numpy
"""


def test_the_checker_reports_a_planted_upward_import() -> None:
    found = violations(PLANTED, "pi_agent.decide.planted", known=modules())
    assert found == [
        "pi_agent.decide.planted:6: imports pi_agent.audio.gate, below the core",
        "pi_agent.decide.planted:11: imports pi_agent.config, below the core",
        "pi_agent.decide.planted:15: imports asyncio, which does I/O or runs things concurrently",
        "pi_agent.decide.planted:16: imports numpy, not the standard library",
    ]


def test_the_checker_resolves_relative_imports_from_a_package() -> None:
    assert violations("from ..gpio import leds\nfrom . import states\n", "pi_agent.decide",
                      is_package=True) == ["pi_agent.decide:1: imports pi_agent.gpio, below the core"]
    assert violations("from .. import __version__\n", "pi_agent.engine.conversation") == []


def test_the_cycle_check_reports_a_planted_cycle() -> None:
    planted = {"pi_agent.decide.model": {"pi_agent.gpio.button"},
               "pi_agent.gpio.button": {"pi_agent.gpio.leds"},
               "pi_agent.gpio.leds": {"pi_agent.decide.model"},
               "pi_agent.daemon": {"pi_agent.decide.model"}}
    assert cycles_across(planted) == [{"pi_agent.decide.model", "pi_agent.gpio.button", "pi_agent.gpio.leds"}]
