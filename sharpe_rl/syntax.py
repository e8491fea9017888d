"""Parsing Python source safely from any thread: every `ast.parse` of the library goes through here.

CPython 3.11 before 3.11.8 keeps the AST constructor's recursion counter in interpreter-wide
state (python/cpython gh-106905). When the garbage collector runs a finalizer in the middle of
building a tree, another thread may parse meanwhile, and one of them raises `SystemError: AST
constructor recursion depth mismatch`. The executions of a cycle run on a thread pool (or on a
Dask worker's threads), so the static checks and the classifier parse concurrently: one lock per
process serialises the parse. A parse takes well under a millisecond for the code a policy
writes, so the lock costs nothing measurable; on a fixed Python it is merely redundant.

Also here: the two questions about a parsed module that both of the classifier's readers
(`sharpe_rl.classify.models`, `sharpe_rl.classify.features`) ask.
"""

from __future__ import annotations

import ast
import threading

_parse_lock = threading.Lock()


def parse_python(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse(source)`, one thread at a time; raises what `ast.parse` raises."""
    with _parse_lock:
        return ast.parse(source, filename=filename)


#: The statements that define a name the readers can follow (a helper function, a model class).
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def definitions(tree: ast.Module) -> dict[str, Definition]:
    """Functions and classes by name; a module-level definition wins over a nested one."""
    found: dict[str, Definition] = {}
    for node in ast.walk(tree):
        if isinstance(node, DEFINITIONS):
            found.setdefault(node.name, node)
    for node in tree.body:
        if isinstance(node, DEFINITIONS):
            found[node.name] = node
    return found


def argument(call: ast.Call | None, keywords: tuple[str, ...], position: int = 0) -> ast.expr | None:
    """The keyword argument named in `keywords`, else the positional argument at `position`."""
    if call is None:
        return None
    for keyword in call.keywords:
        if keyword.arg in keywords:
            return keyword.value
    return call.args[position] if len(call.args) > position else None
