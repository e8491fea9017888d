"""Static checks of a completion, before any sandbox runs: the original failure modes, caught cheaply.

`check_completion(text, columns)` returns the ExperimentSpec or raises `SpecError` with its class:
- `json_parse`, `schema`: no JSON object, or not an ExperimentSpec (`spec.parse_spec`);
- `syntax`: either source fails `ast.parse`;
- `forbidden_import`: an import outside ALLOWED_PACKAGES (relative imports included), or dynamic
  import machinery that would get around the list (`__import__`, `__builtins__`, `exec`, `eval`,
  `compile`, `__subclasses__`, `__globals__`, ...);
- `bad_interface`: neither source defines `make_features` or `make_model` at top level;
- `missing_column`: `make_features` reads, from its input frame, a column the dataset does not have
  (`df['x']`, `df[['a', 'b']]`, `df.x`, `df.loc[:, 'x']`), counting the dataset's columns and every
  column the code creates anywhere (`df['x'] = ...`, `.assign(x=...)`, `.insert(i, 'x', ...)`);
- `runtime_error`: `make_features` or `make_model` certainly reads a name that nothing binds, such
  as a model class never imported (the NameError the sandbox would report, on the same rung of
  the penalty ladder, without a container): see `unbound_names`.

These checks are a filter, not the boundary (the sandbox is): they flag only what is certain to
fail, so legitimate code is never rejected. Column checks follow only names that certainly hold
the input frame (the parameter, and names bound only to it or to a column-preserving method of
it, such as `df.copy()`), skip reads guarded by `'x' in df.columns` or by `try/except KeyError`,
and stand down when the code adds columns whose names cannot be read off the source.
"""

from __future__ import annotations

import ast
import builtins
from collections import defaultdict
from collections.abc import Iterator, Sequence

import pandas as pd

from sharpe_rl.sandbox.contract import ALLOWED_PACKAGES, ErrorClass
from sharpe_rl.spec import ExperimentSpec, SpecError, parse_spec
from sharpe_rl.syntax import parse_python

#: Names that reach the import machinery (or run code the import check never sees).
DYNAMIC_IMPORT_NAMES = frozenset({"__import__", "__builtins__", "__loader__", "__spec__", "exec", "eval", "compile"})
DYNAMIC_IMPORT_ATTRIBUTES = frozenset(
    {"__import__", "__builtins__", "__globals__", "__subclasses__", "__loader__", "__spec__", "__code__"}
)
#: DataFrame methods that return a frame with the same columns (so `df = df.copy()` keeps `df` the input).
COLUMN_PRESERVING_METHODS = frozenset(
    {
        "copy", "sort_index", "sort_values", "dropna", "fillna", "ffill", "bfill", "astype", "assign",
        "infer_objects", "interpolate", "clip", "abs", "round", "replace", "head", "tail", "shift", "diff",
        "pct_change",
    }
)  # fmt: skip
#: Exceptions whose handler makes a failing column read deliberate.
KEY_ERROR_HANDLERS = frozenset({"KeyError", "LookupError", "Exception", "BaseException"})
_DATAFRAME_ATTRIBUTES = frozenset(dir(pd.DataFrame))
#: Names and attributes through which code can bind a global name that no statement shows.
DYNAMIC_BINDING_NAMES = frozenset({"globals", "vars", "locals", "setattr"})
DYNAMIC_BINDING_ATTRIBUTES = frozenset({"f_globals", "f_locals", "__dict__"})
#: Statements after which the next one certainly runs, unless this one raises (a failure too).
_STRAIGHT_STATEMENTS = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Import, ast.ImportFrom, ast.Pass)


def check_completion(text: str, columns: Sequence[str]) -> ExperimentSpec:
    """The ExperimentSpec in `text`, if it passes every static check; SpecError otherwise (carrying the spec
    when the text parsed to one and its code failed a check)."""
    spec = parse_spec(text)
    try:
        _check_code(spec, columns)
    except SpecError as exc:
        raise SpecError(exc.error_class, str(exc), spec) from exc
    return spec


def _check_code(spec: ExperimentSpec, columns: Sequence[str]) -> None:
    trees = {part: _parse(part, getattr(spec, part)) for part in ("features", "model")}
    for part, tree in trees.items():
        _check_imports(part, tree)
    _check_interface(trees)
    missing = missing_columns(trees, columns)
    if missing:
        raise SpecError(
            ErrorClass.missing_column,
            f"make_features reads {', '.join(repr(c) for c in missing)}, which the dataset does not have "
            f"(its columns: {', '.join(columns)})",
        )
    unbound = unbound_names(trees)
    if unbound:
        function, name = unbound[0]
        raise SpecError(
            ErrorClass.runtime_error,
            f"{function} uses {name!r}, which is never imported or defined (a NameError when it runs)",
        )


def _parse(part: str, source: str) -> ast.Module:
    try:
        return parse_python(source, filename=f"<{part}>")
    except SyntaxError as exc:
        raise SpecError(ErrorClass.syntax, f"the {part} source does not parse: line {exc.lineno}: {exc.msg}") from exc
    except ValueError as exc:  # e.g. a NUL byte in the source
        raise SpecError(ErrorClass.syntax, f"the {part} source does not parse: {exc}") from exc
    except (RecursionError, MemoryError) as exc:  # nested too deeply for the parser: Python cannot compile it either
        raise SpecError(ErrorClass.syntax, f"the {part} source is nested too deeply to compile") from exc


def _check_imports(part: str, tree: ast.Module) -> None:
    allowed = ", ".join(sorted(ALLOWED_PACKAGES))
    for node in ast.walk(tree):
        imported: list[str] = []
        if isinstance(node, ast.Import):
            imported = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise SpecError(
                    ErrorClass.forbidden_import, f"{part} line {node.lineno}: relative imports are not allowed"
                )
            imported = [node.module or ""]
        for module in imported:
            if module.split(".")[0] not in ALLOWED_PACKAGES:
                raise SpecError(
                    ErrorClass.forbidden_import,
                    f"{part} line {node.lineno} imports {module!r}; allowed packages: {allowed}",
                )
        name = node.id if isinstance(node, ast.Name) else None
        attribute = node.attr if isinstance(node, ast.Attribute) else None
        if name in DYNAMIC_IMPORT_NAMES or attribute in DYNAMIC_IMPORT_ATTRIBUTES:
            raise SpecError(
                ErrorClass.forbidden_import,
                f"{part} line {node.lineno} uses {name or attribute}: dynamic imports and code execution "
                f"are not allowed; import only {allowed}",
            )


def _check_interface(trees: dict[str, ast.Module]) -> None:
    defined = set().union(*(_top_level_names(tree) for tree in trees.values()))
    for function, part in (("make_features", "features"), ("make_model", "model")):
        if function not in defined:
            raise SpecError(ErrorClass.bad_interface, f"the {part} source must define {function}() at top level")


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


# ---- names ----


def unbound_names(trees: dict[str, ast.Module]) -> list[tuple[str, str]]:
    """(function, name) for each name `make_features` or `make_model` certainly reads and nothing binds.

    Certainly read: in the function's straight-line start (its top-level statements up to the first
    `return`, `raise` or compound statement), evaluated unconditionally (not behind `and`/`or`, a
    conditional expression, a later comparison of a chain, a lambda or a comprehension). The worker
    calls both functions before any experiment can be scored, so reading such a name is a NameError
    in every run. Nothing binds it: no builtin, and no import, assignment, definition, parameter or
    `global` anywhere in either source (they run in one namespace), in any scope. The check stands
    down when code can bind names unseen (a star import, `globals()`, `vars()`, `setattr`, frame or
    `__dict__` access) and for a function that is decorated, a generator, or bound more than once.
    """
    nodes = [node for tree in trees.values() for node in ast.walk(tree)]
    if any(_binds_unseen(node) for node in nodes):
        return []
    bound = [name for node in nodes for name in _bound_names(node)]
    known = set(bound) | set(dir(builtins))
    unbound = []
    for function in ("make_features", "make_model"):
        definitions = [
            node for tree in trees.values() for node in tree.body if isinstance(node, ast.FunctionDef)
            and node.name == function
        ]  # fmt: skip
        if bound.count(function) != 1 or len(definitions) != 1:
            continue
        definition = definitions[0]
        if definition.decorator_list or any(isinstance(n, ast.Yield | ast.YieldFrom) for n in _own_nodes(definition)):
            continue
        for name in _certainly_read(definition.body):
            if name not in known and not (name.startswith("__") and name.endswith("__")):
                unbound.append((function, name))
    return unbound


def _binds_unseen(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names):
        return True
    if isinstance(node, ast.Name) and node.id in DYNAMIC_BINDING_NAMES:
        return True
    return isinstance(node, ast.Attribute) and node.attr in DYNAMIC_BINDING_ATTRIBUTES


def _bound_names(node: ast.AST) -> list[str]:
    """The names `node` binds, in whatever scope (a superset of what the module's namespace can hold)."""
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        return [node.id]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [(alias.asname or alias.name).split(".")[0] for alias in node.names]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.Global | ast.Nonlocal):
        return list(node.names)
    if isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
        return [node.name]
    if isinstance(node, ast.MatchMapping) and node.rest:
        return [node.rest]
    return []


def _certainly_read(body: list[ast.stmt]) -> Iterator[str]:
    """Names read by every call of a function with this body (see `unbound_names`)."""
    for statement in body:
        if isinstance(statement, ast.Return | ast.Raise):
            yield from (name for child in ast.iter_child_nodes(statement) for name in _eagerly_read(child))
            return
        if isinstance(statement, ast.Assert):
            continue  # skipped under -O; what follows runs unless it fails
        if not isinstance(statement, _STRAIGHT_STATEMENTS):
            return
        if isinstance(statement, ast.AnnAssign):  # a local's annotation is never evaluated
            children = [statement.value] if statement.value else []
        else:
            children = list(ast.iter_child_nodes(statement))
        yield from (name for child in children for name in _eagerly_read(child))


def _eagerly_read(node: ast.AST) -> Iterator[str]:
    """Names whose value evaluating `node` always needs (unless an earlier part of it fails)."""
    if isinstance(node, ast.Name):
        if isinstance(node.ctx, ast.Load):
            yield node.id
        return
    if isinstance(node, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
        return
    if isinstance(node, ast.BoolOp):
        children: list[ast.AST] = node.values[:1]
    elif isinstance(node, ast.IfExp):
        children = [node.test]
    elif isinstance(node, ast.Compare):
        children = [node.left, node.comparators[0]]
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _eagerly_read(child)


# ---- columns ----


def missing_columns(trees: dict[str, ast.Module], columns: Sequence[str]) -> list[str]:
    """Columns `make_features` certainly reads from its input frame that neither the data nor the code provides."""
    function = next(
        (node for node in trees["features"].body if isinstance(node, ast.FunctionDef) and node.name == "make_features"),
        None,
    )
    parameters = [*function.args.posonlyargs, *function.args.args] if function else []
    if function is None or not parameters:
        return []  # defined some other way, or wrongly: the sandbox reports what happens
    created = _created_columns(trees)
    if created is None:
        return []
    known = set(columns) | created | _guarded_columns(function)
    reads = _ColumnReads(_input_frame_names(function, parameters[0].arg))
    for statement in function.body:
        reads.visit(statement)
    return sorted(set(reads.columns) - known)


def _input_frame_names(function: ast.FunctionDef, parameter: str) -> set[str]:
    """Names in `function` that always hold the input frame (or a column-preserving copy of it)."""
    bindings = _scope_bindings(function)
    frames = {parameter} | {name for name, values in bindings.items() if all(v is not None for v in values)}
    changed = True
    while changed:
        changed = False
        for name in list(frames):
            if not all(_preserves_frame(value, frames) for value in bindings[name]):
                frames.discard(name)
                changed = True
    return frames


def _scope_bindings(scope: ast.AST) -> dict[str, list[ast.expr | None]]:
    """Every name bound anywhere inside `scope`, with the values bound (None: not a plain assignment)."""
    bindings: dict[str, list[ast.expr | None]] = defaultdict(list)
    for node in ast.walk(scope):
        for name, value in _bindings(node, scope):
            bindings[name].append(value)
    return bindings


def _bindings(node: ast.AST, scope: ast.AST) -> Iterator[tuple[str, ast.expr | None]]:
    """(name, value) for every name `node` binds; value None when it is not a plain assignment.

    Parameters of nested functions are not bindings here: `_ColumnReads` skips the functions
    whose parameters shadow a frame name.
    """
    if isinstance(node, ast.Assign):
        for target in node.targets:
            value = node.value if isinstance(target, ast.Name) else None
            yield from ((name, value) for name in _names_in(target))
    elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor | ast.comprehension):
        yield from ((name, None) for name in _names_in(node.target))
    elif isinstance(node, ast.NamedExpr):
        yield node.target.id, None
    elif isinstance(node, ast.withitem) and node.optional_vars is not None:
        yield from ((name, None) for name in _names_in(node.optional_vars))
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node is not scope:
        yield node.name, None
    elif isinstance(node, ast.Global | ast.Nonlocal):
        yield from ((name, None) for name in node.names)
    elif isinstance(node, ast.Delete):
        yield from ((name, None) for target in node.targets for name in _names_in(target))
    elif isinstance(node, ast.ExceptHandler) and node.name:
        yield node.name, None
    elif isinstance(node, ast.Import | ast.ImportFrom):
        yield from (((alias.asname or alias.name).split(".")[0], None) for alias in node.names)
    elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
        yield node.name, None
    elif isinstance(node, ast.MatchMapping) and node.rest:
        yield node.rest, None


def _names_in(target: ast.AST) -> list[str]:
    """Names a target binds (subscript and attribute targets bind none)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        return [name for element in target.elts for name in _names_in(element)]
    if isinstance(target, ast.Starred):
        return _names_in(target.value)
    return []


def _preserves_frame(value: ast.expr | None, frames: set[str]) -> bool:
    """Whether `value` is a frame name, or a column-preserving method call on one (chains allowed)."""
    if isinstance(value, ast.Name):
        return value.id in frames
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
        return value.func.attr in COLUMN_PRESERVING_METHODS and _preserves_frame(value.func.value, frames)
    return False


def _created_columns(trees: dict[str, ast.Module]) -> set[str] | None:
    """Every column name the code may add anywhere, or None when the features code adds columns (or
    renames them) in a way whose names cannot be read off the source, on an object that may be the input."""
    created: set[str] = set()
    for part, tree in trees.items():
        scopes: list[ast.AST] = [
            tree,
            *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)),
        ]
        for scope in scopes:
            # only the features code receives the frame; the model's own stores never matter
            fresh = _fresh_objects(scope) if part == "features" else None
            for node in _own_nodes(scope):
                names = _added_columns(node, fresh)
                if names is None:
                    return None
                created |= names
    return created


def _added_columns(node: ast.AST, fresh: set[str] | None) -> set[str] | None:
    """Column names `node` may add; None when it adds unreadable ones to what may be the input frame.

    `fresh` holds the names known to be new objects; None means nothing here can be the input.
    """

    def may_be_input(expression: ast.AST) -> bool:
        return fresh is not None and _root_name(expression) not in fresh

    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
        names = _literal_columns(_column_key(node))
        return None if names is None and may_be_input(node.value) else names or set()
    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
        return None if node.attr == "columns" and may_be_input(node.value) else {node.attr}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return set()
    method = node.func.attr
    if any(keyword.arg == "inplace" for keyword in node.keywords) and may_be_input(node.func.value):
        return None  # rename/eval/set_axis in place
    if method == "assign":
        if any(keyword.arg is None for keyword in node.keywords):
            return None if may_be_input(node.func.value) else set()
        return {keyword.arg for keyword in node.keywords if keyword.arg}
    if method == "insert" and len(node.args) >= 2:
        names = _literal_columns(node.args[1])
        return None if names is None and may_be_input(node.func.value) else names or set()
    return set()


def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of `scope` itself, not those of the functions defined inside it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            stack.extend(ast.iter_child_nodes(node))


def _fresh_objects(scope: ast.AST) -> set[str]:
    """Names in `scope` bound only to new objects: literals, or calls of an imported or global name
    that pass no bare name along (`pd.DataFrame(index=df.index)`, `dict()`), never the input frame."""
    bindings = _scope_bindings(scope)
    imported = {
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(scope)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    parameters = {arg.arg for arg in ast.walk(scope) if isinstance(arg, ast.arg)}

    def is_new(value: ast.expr | None) -> bool:
        if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp):
            return True
        if not isinstance(value, ast.Call):
            return False
        root = _root_name(value.func)
        passes_a_name = any(isinstance(a, ast.Name) for a in [*value.args, *(k.value for k in value.keywords)])
        return (
            root is not None
            and root not in parameters
            and (root in imported or root not in bindings)
            and not passes_a_name
        )

    return {name for name, values in bindings.items() if name not in parameters and all(map(is_new, values))}


def _column_key(node: ast.Subscript) -> ast.expr:
    """The column part of `x[key]`, `x.loc[rows, key]` or `x.at[row, key]`."""
    if (
        isinstance(node.value, ast.Attribute)
        and node.value.attr in {"loc", "at"}
        and isinstance(node.slice, ast.Tuple)
        and len(node.slice.elts) == 2
    ):
        return node.slice.elts[1]
    return node.slice


def _literal_columns(key: ast.expr) -> set[str] | None:
    """The column names a literal key names (`'x'`, `['a', 'b']`); None when it is not a literal."""
    if isinstance(key, ast.Constant):
        return {key.value} if isinstance(key.value, str) else set()
    if isinstance(key, ast.List | ast.Tuple) and all(isinstance(e, ast.Constant) for e in key.elts):
        return {e.value for e in key.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    if isinstance(key, ast.Slice):
        return set()  # row slices add no columns
    return None


def _root_name(node: ast.AST) -> str | None:
    """`df` for `df`, `df.loc`, `df['x'].values`, `df.rolling(5).mean()`."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _guarded_columns(function: ast.FunctionDef) -> set[str]:
    """Columns tested for first (`'vwap' in df.columns`): reading them is deliberate."""
    guarded: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            for operand in (node.left, *node.comparators):
                guarded |= _literal_columns(operand) or set()
    return guarded


class _ColumnReads(ast.NodeVisitor):
    """Literal column names read from the input frame, outside code that handles a KeyError."""

    def __init__(self, frames: set[str]) -> None:
        self.frames = frames
        self.columns: list[str] = []

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.ctx, ast.Load):
            target = node.value.value if _is_indexer(node.value) else node.value
            if isinstance(target, ast.Name) and target.id in self.frames:
                key = _column_key(node) if _is_indexer(node.value) else node.slice
                if not (_is_indexer(node.value) and key is node.slice):  # .loc[rows] alone reads no column
                    self.columns.extend(sorted(_literal_columns(key) or set()))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if (
            isinstance(node.ctx, ast.Load)
            and isinstance(node.value, ast.Name)
            and node.value.id in self.frames
            and not node.attr.startswith("_")
            and node.attr not in _DATAFRAME_ATTRIBUTES
        ):
            self.columns.append(node.attr)
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        handles_key_error = any(_catches_key_error(handler) for handler in node.handlers)
        for child in node.body:
            if not handles_key_error:
                self.visit(child)
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    def _shadowing(self, node: ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        # a nested function whose parameter reuses a frame name refers to something else inside
        arguments = {arg.arg for arg in ast.walk(node.args) if isinstance(arg, ast.arg)}
        if not arguments & self.frames:
            self.generic_visit(node)

    visit_Lambda = visit_FunctionDef = visit_AsyncFunctionDef = _shadowing


def _is_indexer(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in {"loc", "at"}


def _catches_key_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(name, ast.Name) and name.id in KEY_ERROR_HANDLERS for name in names)
