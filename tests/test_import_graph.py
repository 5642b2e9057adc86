"""Who imports whom: the runtime side stands alone, the exporters are reached only through engines,
and no module takes part in an import circle.

The graph is read from the source by ``import_graph.py`` (imports inside
functions included); the dynamic side, a reply with torch and the exporters
made unimportable, is in test_runtime.py.
"""

from __future__ import annotations

import ast

from import_graph import PACKAGES, Import, eager_closure, find_cycles, import_graph

EXPORTERS = "persona_sdk.exporters"
COMPOSER = "persona_sdk.engines"
HEAVY = ("torch", "transformers", "peft", "optimum", "onnx", EXPORTERS)


def _is(target: str, names) -> bool:
    return any(target == n or target.startswith(n + ".") for n in names)


def test_only_the_composing_layer_and_the_cli_import_the_exporters():
    graph = import_graph()
    offenders = sorted(
        f"{module} (line {imp.line})"
        for module, imports in graph.items()
        if module != COMPOSER and not _is(module, ("persona_sdk.cli", EXPORTERS))
        for imp in imports if _is(imp.target, (EXPORTERS,))
    )
    assert offenders == []
    # the walker does see that edge where it exists, lazily (only when a build is asked for)
    assert {imp.lazy for imp in graph[COMPOSER] if _is(imp.target, (EXPORTERS,))} == {True}


def test_importing_the_chat_path_pulls_in_neither_torch_nor_the_exporters():
    graph = import_graph()
    for module in ("persona_sdk.runtime", "persona_sdk.agent", COMPOSER, "persona_sdk.manifest",
                   "persona_sdk.config", "persona_sdk.cli.chat"):
        heavy = sorted(m for m in eager_closure(graph, module) if _is(m, HEAVY))
        assert heavy == [], module
    # the exporters themselves depend on the runtime-side contract, not the other way round
    assert "persona_sdk.manifest" in {imp.target for imp in graph[f"{EXPORTERS}.onnx_export"]}


def test_no_import_circle_anywhere():
    """Every module under persona_sdk/, cli/ and exporters/, imports inside functions included."""
    graph = import_graph()
    assert {"persona_sdk.chats", "persona_sdk.cli", f"{EXPORTERS}.onnx_export"} <= set(graph)  # all walked
    assert [sorted(c) for c in find_cycles(graph)] == []


def test_chat_importers_never_reach_back_to_the_dispatcher():
    """chats (the format dispatcher) -> importers -> chatdata / chatbytes, never back."""
    graph = import_graph()
    assert "persona_sdk.importers" in {imp.target for imp in graph["persona_sdk.chats"]}
    for module in [m for m in graph if _is(m, ("persona_sdk.importers",))] + ["persona_sdk.chatdata",
                                                                               "persona_sdk.chatbytes"]:
        assert "persona_sdk.chats" not in {imp.target for imp in graph[module]}, module


def test_the_cli_uses_only_public_library_names_and_shares_helpers_through_its_own_modules():
    """A thin CLI: no private module or name of the library (persona_sdk._crypto, vault._read_bounded...),
    and no command module importing another (shared helpers live in cli/_common.py)."""
    offenders = []
    for path in sorted(PACKAGES["persona_sdk.cli"].glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            names = [a.name for a in node.names]
            if node.level == 0 and (node.module or "").startswith("persona_sdk"):
                private = [n for n in (node.module or "").split(".") + names if n.startswith("_")]
            elif node.level == 1 and path.name != "__init__.py":  # a sibling: only the CLI's shared modules
                private = [] if (node.module or "").startswith("_") else [f".{node.module or ''} {names}"]
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} {p}" for p in private]
    assert offenders == []


def test_the_cycle_walker_finds_circles():
    def g(edges):
        return {m: {Import(t, lazy, 1) for t, lazy in targets} for m, targets in edges.items()}

    graph = g({"a": [("b", False)], "b": [("c", True)], "c": [("a", False), ("os", False)],
               "d": [("a", False)], "e": [("e", True)]})
    assert sorted(map(sorted, find_cycles(graph))) == [["a", "b", "c"], ["e"]]
    assert find_cycles(graph, lazy=False) == []  # b -> c and e -> e run only when called
    assert eager_closure(graph, "d") == {"a", "b"}
