"""Parsing Python source safely from any thread: every `ast.parse` of the library goes through here.

CPython 3.11 before 3.11.8 keeps the AST constructor's recursion counter in interpreter-wide
state (python/cpython gh-106905). When the garbage collector runs a finalizer in the middle of
building a tree, another thread may parse meanwhile, and one of them raises `SystemError: AST
constructor recursion depth mismatch`. The executions of a cycle run on a thread pool (or on a
Dask worker's threads), so the static checks and the classifier parse concurrently: one lock per
process serialises the parse. A parse takes well under a millisecond for the code a policy
writes, so the lock costs nothing measurable; on a fixed Python it is merely redundant.
"""

from __future__ import annotations

import ast
import threading

_parse_lock = threading.Lock()


def parse_python(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse(source)`, one thread at a time; raises what `ast.parse` raises."""
    with _parse_lock:
        return ast.parse(source, filename=filename)
