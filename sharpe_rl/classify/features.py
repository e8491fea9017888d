"""The kinds of feature an experiment computes: what `make_features(df)` outputs, read from the syntax tree.

Every feature `make_features(df)` outputs (a column assigned into a frame, a value of
`pd.DataFrame({...})`, an item of `pd.concat([...])`, a keyword of `.assign(...)`, else the
returned expression) gets one *kind* from the operations that produced it, followed through
local variables, columns written earlier and helper functions. Each kind belongs to one
building block. The features are *custom* when they use a kind the prompt's worked example does
not use (`TEMPLATE_FEATURE_KINDS`, checked against `prompts/v4_example.j2` by the tests).

Both contracts of `make_features` are read: one symbol's bars (earlier runs, still in the replay
buffer) and the panel (every symbol at once, indexed by (timestamp, symbol)). On the panel,
grouping by symbol (`g = df.groupby(level="symbol")`, then `g["close"].pct_change(5)` or
`g["close"].transform(lambda s: ...)`) is how one symbol's feature is computed, so it adds no kind:
the operations inside decide, as on one symbol's bars. Grouping by timestamp
(`x.groupby(level="timestamp").rank(pct=True)`, `.transform("mean")`) or working across a frame
unstacked to one column per symbol (`rank(axis=1)`) compares the symbols at each time: the
"cross_section" kind. Naming one symbol (a ticker, `xs(code, level="symbol")`) is "cross_asset".
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from sharpe_rl.grid import FEATURE_BLOCKS, FEATURE_KIND_BLOCK, TEMPLATE_FEATURE_KINDS
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS
from sharpe_rl.syntax import DEFINITIONS, argument, definitions, parse_python

_OHLCV = frozenset(OHLCV_COLUMNS)
_CALENDAR_ATTRIBUTES = frozenset(
    {"hour", "minute", "dayofweek", "day_of_week", "weekday", "dayofyear", "day_of_year", "month", "quarter"}
)
# A string literal naming a trading pair ("ETHUSDT", "BTC-USD", "BTCUSDT_close").
_TICKER = re.compile(r"(^|[^A-Za-z0-9])[A-Z0-9]{2,10}[-/]?(USDT|USDC|BUSD|USD|BTC|ETH|EUR)($|[^A-Za-z0-9])")
# The levels of the panel's index (timestamp, symbol), by name and by position.
_INDEX_LEVELS: dict[str | int, str] = {
    "timestamp": "timestamp",
    0: "timestamp",
    "symbol": "symbol",
    1: "symbol",
    -1: "symbol",
}
_WINDOWS = frozenset({"rolling", "ewm", "expanding"})
_FRAME_BUILDERS = frozenset({"DataFrame", "concat"})


@dataclass(frozen=True, slots=True)
class FeatureClass:
    """The feature kinds and building blocks `make_features(df)` outputs."""

    kinds: tuple[str, ...] = ()  # keys of FEATURE_KIND_BLOCK, in that order
    is_custom: bool | None = None  # None when the source does not parse or defines no make_features

    @property
    def blocks(self) -> tuple[str, ...]:
        used = {FEATURE_KIND_BLOCK[kind] for kind in self.kinds}
        return tuple(block for block in FEATURE_BLOCKS if block in used)


def classify_features(source: str) -> FeatureClass:
    """The kinds of feature `make_features(df)` in `source` outputs."""
    try:
        tree = parse_python(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return FeatureClass()
    kinds = _FeatureReader(tree).read()
    if kinds is None:
        return FeatureClass()
    return FeatureClass(kinds=kinds, is_custom=bool(set(kinds) - TEMPLATE_FEATURE_KINDS - {"raw"}))


@dataclass
class _State:
    """What one function body has bound so far: signals per variable, items per list variable."""

    env: dict[str, frozenset[str]]
    items: dict[str, list[frozenset[str]]] = field(default_factory=dict)
    selections: dict[str, frozenset[str]] = field(default_factory=dict)  # see `_selection_signals`


class _FeatureReader:
    """Collects the signal set (operations and columns it derives from) of every feature output."""

    def __init__(self, tree: ast.Module) -> None:
        self.functions = {name: node for name, node in definitions(tree).items() if not isinstance(node, ast.ClassDef)}
        self.columns: dict[str, frozenset[str]] = {}  # signals of columns written under a literal name
        self.outputs: list[frozenset[str]] = []
        self._summaries: dict[str, frozenset[str]] = {}
        self._recording = False  # module-level code builds no features
        module_state = _State(env={})
        self._run(tree.body, module_state)
        self._module_env = module_state.env
        self._summaries.clear()  # helpers run from module level recorded nothing: run them again

    def read(self) -> tuple[str, ...] | None:
        make_features = self.functions.get("make_features")
        if make_features is None:
            return None
        self._recording = True
        returned = self._summary(make_features)
        kinds = {_feature_kind(signals) for signals in self.outputs or [returned] if signals}
        return tuple(kind for kind in FEATURE_KIND_BLOCK if kind in kinds)

    def _summary(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> frozenset[str]:
        """Signals of what a function returns; running it records the features it writes."""
        if function.name not in self._summaries:
            self._summaries[function.name] = frozenset()  # a recursive call adds nothing
            state = _State(env=dict(self._module_env))
            self._summaries[function.name] = self._run(function.body, state)
        return self._summaries[function.name]

    def _run(self, body: list[ast.stmt], state: _State) -> frozenset[str]:
        returned: frozenset[str] = frozenset()
        for statement in _flat_statements(body):
            match statement:
                case ast.Assign(targets=targets, value=value):
                    signals = self._signals(value, state)
                    for target in targets:
                        self._bind(target, value, signals, state)
                case ast.AnnAssign(target=target, value=value) if value is not None:
                    self._bind(target, value, self._signals(value, state), state)
                case ast.AugAssign(target=ast.Name(id=name), value=value):
                    state.env[name] = state.env.get(name, frozenset()) | self._signals(value, state)
                case ast.AugAssign(target=target, value=value):
                    self._bind(target, value, self._signals(value, state) | self._signals(target, state), state)
                case ast.For(target=target, iter=iterable) | ast.AsyncFor(target=target, iter=iterable):
                    self._bind(target, iterable, self._signals(iterable, state), state)
                case ast.Return(value=value) if value is not None:
                    returned |= self._signals(value, state)
                case ast.Expr(value=value):
                    self._signals(value, state)
        return returned

    def _bind(self, target: ast.expr, value: ast.expr, signals: frozenset[str], state: _State) -> None:
        if isinstance(target, ast.Name):
            state.env[target.id] = signals
            state.selections[target.id] = _selection_signals(value)
            if isinstance(value, ast.List | ast.Tuple):
                state.items[target.id] = [self._signals(e, state) for e in value.elts]
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                self._bind(element, value, signals, state)
        elif isinstance(target, ast.Subscript):  # out["name"] = ..., out.loc[:, "name"] = ...
            self._output(signals)
            key = target.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                self.columns[key.value] = signals

    def _output(self, signals: frozenset[str]) -> None:
        # A value derived from nothing (a frame variable, a constant) is not a feature of anything.
        if self._recording and signals:
            self.outputs.append(signals)

    def _signals(self, node: ast.AST, state: _State) -> frozenset[str]:
        """The operations and columns `node` derives from, following variables and helpers."""
        match node:
            case ast.Name(id=name):
                if name in state.env:
                    return state.env[name]
                function = self.functions.get(name)  # a helper passed by reference (`.apply(rsi)`)
                return self._summary(function) if function is not None else frozenset()
            case ast.Constant(value=str() as text):
                if text in _OHLCV:  # "symbol" and "timestamp" are index levels (groupby, unstack): no data
                    return frozenset({f"col:{text}"})
                return frozenset({"cross_asset"}) if _TICKER.search(text) else frozenset()
            case ast.Attribute(value=value, attr=attr):
                if attr in _OHLCV:  # df.close selects one column: the frame's other columns do not flow
                    return frozenset({f"col:{attr}"}) | self._selection(value, state)
                calendar = {"calendar"} if attr in _CALENDAR_ATTRIBUTES else set()
                return self._signals(value, state) | calendar
            case ast.Subscript(value=value, slice=ast.Constant(value=str() as key)):
                # Selecting one column: what flows is that column (and which rows), not the rest of the frame.
                if key == "symbol":  # a symbol column: code about other symbols (the panel has it as an index level)
                    return frozenset({"cross_asset"})
                selected = self.columns[key] if key in self.columns else self._signals(node.slice, state)
                return selected | self._selection(value, state)
            case ast.Call():
                return self._call_signals(node, state)
            case ast.BinOp(left=left, op=op, right=right):
                return self._binop_signals(left, op, right, state)
        signals: frozenset[str] = frozenset()
        for child in ast.iter_child_nodes(node):
            signals |= self._signals(child, state)
        return signals

    def _selection(self, node: ast.expr, state: _State) -> frozenset[str]:
        """`_selection_signals` of `node`, or of the value a name was bound to."""
        return state.selections.get(node.id, frozenset()) if isinstance(node, ast.Name) else _selection_signals(node)

    def _call_signals(self, call: ast.Call, state: _State) -> frozenset[str]:
        arguments = [*call.args, *(k.value for k in call.keywords)]
        signals: frozenset[str] = frozenset()
        for value in arguments:
            signals |= self._signals(value, state)
        func = call.func
        if isinstance(func, ast.Name):
            function = self.functions.get(func.id)
            if function is not None:
                signals |= self._summary(function)
            name = func.id
        elif isinstance(func, ast.Attribute):
            name = func.attr
            if name in _ROW_REDUCERS and _is_frame_builder(func.value):
                # pd.concat([...], axis=1).max(axis=1) is one feature (true range), not several.
                recording, self._recording = self._recording, False
                receiver = self._signals(func.value, state)
                self._recording = recording
            else:
                receiver = self._signals(func.value, state)
            signals |= receiver | _method_signals(func, call)
            if "wide" in receiver and _along_columns(call):  # across a frame of one column per symbol
                signals |= {"cross_section"}
            if name in ("append", "extend") and isinstance(func.value, ast.Name):
                self._collect(func.value.id, name, call, state)
        else:
            return signals | self._signals(func, state)
        if name in _FRAME_BUILDERS:
            self._frame_outputs(call, state)
        elif name == "assign":
            for keyword in call.keywords:
                self._output(self._signals(keyword.value, state))
        elif name == "insert" and len(call.args) == 3:  # DataFrame.insert(loc, column, value)
            self._output(self._signals(call.args[2], state))
        return signals

    def _collect(self, name: str, method: str, call: ast.Call, state: _State) -> None:
        """Remember what is appended to a list, so `pd.concat(parts)` sees each part."""
        items = state.items.setdefault(name, [])
        for item in call.args:
            if method == "extend" and isinstance(item, ast.List | ast.Tuple):
                items.extend(self._signals(e, state) for e in item.elts)
            else:
                items.append(self._signals(item, state))
            state.env[name] = state.env.get(name, frozenset()) | items[-1]

    def _frame_outputs(self, call: ast.Call, state: _State) -> None:
        """Each column of `pd.DataFrame({...})` / `pd.concat([...])` is one output."""
        data = argument(call, ("data", "objs"))
        if data is None:
            return
        if isinstance(data, ast.Dict):
            parts = [self._signals(v, state) for v in data.values]
        elif isinstance(data, ast.List | ast.Tuple):
            parts = [self._signals(e, state) for e in data.elts]
        elif isinstance(data, ast.Name) and state.items.get(data.id):
            parts = state.items[data.id]
        else:
            parts = [self._signals(data, state)]
        for part in parts:
            self._output(part)

    def _binop_signals(self, left: ast.expr, op: ast.operator, right: ast.expr, state: _State) -> frozenset[str]:
        left_signals, right_signals = self._signals(left, state), self._signals(right, state)
        signals = set(left_signals | right_signals)
        if isinstance(op, ast.Div):
            if "shift" in signals:  # x / x.shift(n)
                signals.add("shift_ratio")
            centred = isinstance(left, ast.BinOp) and isinstance(left.op, ast.Sub)
            if centred and left_signals & _MEANS and right_signals & _STDS:  # (x - mean) / std
                signals.add("zscore")
        if isinstance(op, ast.Sub):
            if "ewm_mean" in left_signals and "ewm_mean" in right_signals:
                signals.add("macd")
            if {"col:high", "col:low"} <= signals and ("col:high" in left_signals) != ("col:high" in right_signals):
                signals.add("range")
        return frozenset(signals)


_MEANS = frozenset({"rolling_mean", "ewm_mean", "expanding_mean"})
_ROW_REDUCERS = frozenset({"max", "min", "mean", "median", "sum", "std", "prod"})
_STDS = frozenset({"rolling_std", "ewm_std", "expanding_std", "rolling_var", "ewm_var", "std", "var"})
_RETURNS = frozenset({"pct_change", "diff", "shift_ratio"})


def _method_signals(func: ast.Attribute, call: ast.Call) -> set[str]:
    """Signals of one method or function call, `close.rolling(20).mean()` -> {"rolling_mean"}."""
    method = func.attr
    if method in ("pct_change", "diff", "shift", "log", "log1p"):
        return {method}
    if method in ("mean", "std", "var", "min", "max", "skew", "kurt"):
        window = _window(func.value)
        if window:
            return {f"{window}_{method}"}
        return {method} if method in ("std", "var") else set()
    if method == "clip":
        bounds = [*call.args, *(k.value for k in call.keywords if k.arg in ("lower", "upper"))]
        return {"gain_loss"} if any(isinstance(b, ast.Constant) and b.value == 0 for b in bounds) else set()
    if method in ("where", "mask") and call.args and isinstance(call.args[0], ast.Compare):
        return {"gain_loss"}
    if method == "groupby" and _grouping_level(call) == "timestamp":
        return {"cross_section"}
    if method == "unstack" and (not (call.args or call.keywords) or _level_of(argument(call, ("level",))) == "symbol"):
        return {"wide"}  # one column per symbol (the last level is unstacked by default)
    if _selects_one_symbol(call):
        return {"cross_asset"}
    return set()


def _selection_signals(node: ast.expr) -> frozenset[str]:
    """What a column selected from `node` keeps of it: the rows of a frame grouped by timestamp (compared
    across symbols, "cross_section") or of one symbol (`xs(code, level="symbol")`, "cross_asset")."""
    if _grouping_level(node) == "timestamp":
        return frozenset({"cross_section"})
    if _selects_one_symbol(node):
        return frozenset({"cross_asset"})
    return frozenset()


def _selects_one_symbol(node: ast.expr) -> bool:
    """Whether `node` is `x.xs(code, level="symbol")`: one symbol's rows."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "xs":
        return _level_of(argument(node, ("level",), position=2)) == "symbol"
    return False


def _grouping_level(node: ast.expr) -> str | None:
    """The index level `node.groupby(...)` groups by ("timestamp" or "symbol"), if `node` is such a call."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "groupby":
        return _level_of(argument(node, ("level", "by")))
    return None


def _level_of(node: ast.expr | None) -> str | None:
    """ "timestamp" or "symbol" when `node` names a level of the panel's index: "symbol", 0, ["timestamp"],
    `df.index.get_level_values("symbol")`."""
    match node:
        case ast.Constant(value=bool()):
            return None
        case ast.Constant(value=str() | int() as level):
            return _INDEX_LEVELS.get(level)
        case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=int() as level)):
            return _INDEX_LEVELS.get(-level)
        case ast.List(elts=[element]) | ast.Tuple(elts=[element]):
            return _level_of(element)
        case ast.Call(func=ast.Attribute(attr="get_level_values"), args=[element]):
            return _level_of(element)
    return None


def _along_columns(call: ast.Call) -> bool:
    """Whether the call works along each row (`axis=1` or `axis="columns"`)."""
    return any(
        k.arg == "axis" and isinstance(k.value, ast.Constant) and k.value.value in (1, "columns") for k in call.keywords
    )


def _is_frame_builder(node: ast.expr) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in _FRAME_BUILDERS


def _window(receiver: ast.expr) -> str | None:
    """ "rolling", "ewm" or "expanding" when `receiver` is such a window (`x.rolling(20)`)."""
    if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute) and receiver.func.attr in _WINDOWS:
        return receiver.func.attr
    return None


def _feature_kind(signals: frozenset[str]) -> str:
    """One kind per feature: the most specific operation it derives from wins."""
    if "cross_asset" in signals:
        return "cross_asset"
    if "cross_section" in signals:
        return "cross_section"
    if "calendar" in signals:
        return "calendar"
    if "col:volume" in signals:
        return "volume"
    if "gain_loss" in signals and signals & _MEANS:
        return "rsi"
    if "macd" in signals:
        return "macd"
    if {"rolling_min", "rolling_max"} <= signals:
        return "stochastic"
    if "zscore" in signals:
        return "zscore"
    if "range" in signals:
        return "range"
    if signals & _STDS:
        return "std"
    if signals & {"rolling_skew", "rolling_kurt", "expanding_skew", "expanding_kurt"}:
        return "moments"
    if "ewm_mean" in signals:
        return "ema"
    if signals & {"rolling_mean", "expanding_mean"}:
        return "sma"
    if signals & _RETURNS:
        return "return"
    return "raw"


def _flat_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements in source order, entering if/for/while/with/try blocks but not nested definitions."""
    for statement in body:
        yield statement
        if isinstance(statement, DEFINITIONS):
            continue
        for block in ("body", "orelse", "finalbody"):
            yield from _flat_statements(getattr(statement, block, []))
        for handler in getattr(statement, "handlers", []):
            yield from _flat_statements(handler.body)
