"""What an experiment tried, read from the syntax tree of its code — never from regexes over text.

Model family: what `make_model()` *returns* decides. The reader follows import aliases
(`import lightgbm as lgb`, `from sklearn import ensemble as ens`), local variables, helper
functions and classes defined in the same source, scikit-learn pipelines (the final estimator
decides), wrappers (`CalibratedClassifierCV(LGBMClassifier())` is LightGBM) and ensembles (a
`VotingClassifier` of several families is "ensemble", with its members listed). A user class
counts as every model family it builds anywhere in its body or inherits from (`nn.Module` is
torch). Imports that only appear in comments or strings are not in the tree; imports that the
returned model does not use do not matter.

Features: every feature `make_features(df)` outputs (a column assigned into a frame, a value of
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

Cells: the quality-diversity grid is (model-family label × feature building block). An experiment
occupies one cell per building block its features use (`Classification.cells`), so a LightGBM
model on returns and volume sits in (lightgbm, returns) and (lightgbm, volume). Whole combinations
of blocks would make nearly every experiment a cell of its own (44 combinations in the 48
experiments of docs/example-run), leaving nothing to count or compare.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from sharpe_rl.sandbox.contract import OHLCV_COLUMNS
from sharpe_rl.spec import ExperimentSpec
from sharpe_rl.syntax import parse_python

#: Model families, in the order the report lists them.
MODEL_FAMILIES = ("lightgbm", "xgboost", "sklearn", "torch", "statsmodels", "ensemble", "other", "unknown")
#: Kinds of scikit-learn estimator (the `kind` of family "sklearn").
SKLEARN_KINDS = ("trees", "boosting", "linear", "knn", "svm", "mlp", "naive_bayes", "other")
#: Feature building blocks, in the order the report lists them.
FEATURE_BLOCKS = (
    "returns",
    "volatility",
    "oscillators",
    "volume",
    "trend",
    "calendar",
    "cross_section",
    "cross_asset",
    "other",
)
#: The model-family labels a classified experiment can get (`ModelClass.label`), "unknown" excepted.
MODEL_LABELS = tuple(
    label
    for family in MODEL_FAMILIES
    if family != "unknown"
    for label in ([f"sklearn/{kind}" for kind in SKLEARN_KINDS] if family == "sklearn" else [family])
)
#: One cell of the quality-diversity grid: (model-family label, feature building block).
Cell = tuple[str, str]
#: Every cell of the grid, family by family.
GRID_CELLS: tuple[Cell, ...] = tuple((label, block) for label in MODEL_LABELS for block in FEATURE_BLOCKS)
#: Each feature kind, and the building block it belongs to.
FEATURE_KIND_BLOCK = {
    "return": "returns",  # pct_change, diff, log returns, x / x.shift(n)
    "std": "volatility",  # rolling/ewm standard deviation or variance
    "range": "volatility",  # high - low, true range, ATR
    "moments": "volatility",  # rolling skewness or kurtosis of returns
    "rsi": "oscillators",
    "stochastic": "oscillators",  # rolling min and max together: stochastic %K, Williams %R
    "macd": "oscillators",  # difference of two EMAs
    "zscore": "oscillators",  # (x - rolling mean) / rolling std
    "volume": "volume",  # anything computed from volume: ratios, OBV, VWAP
    "sma": "trend",  # rolling mean (moving-average ratios, crossovers, momentum)
    "ema": "trend",
    "calendar": "calendar",  # index.hour, dayofweek, month
    "cross_section": "cross_section",  # compares the symbols at each time: groupby(level="timestamp"), rank(axis=1)
    "cross_asset": "cross_asset",  # names a symbol: a ticker ("BTCUSDT_close"), xs(code, level="symbol")
    "raw": "other",  # a raw column or a lag of it, or arithmetic the reader does not recognise
}
#: The kinds the prompt's worked example uses: lagged returns, rolling volatility, a moving-average
#: ratio. Features that use any other kind (except raw columns) are custom feature engineering.
TEMPLATE_FEATURE_KINDS = frozenset({"return", "std", "sma"})

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
class ModelClass:
    """The model family `make_model()` returns."""

    family: str  # one of MODEL_FAMILIES
    kind: str | None = None  # for family "sklearn": one of SKLEARN_KINDS
    members: tuple[str, ...] = ()  # for family "ensemble": the members' labels, in source order
    estimator: str | None = None  # the qualified name (or local class) that decided

    @property
    def label(self) -> str:
        """`family`, or `sklearn/<kind>`: the value the report and `Experience.model_family` use."""
        return f"{self.family}/{self.kind}" if self.kind else self.family


@dataclass(frozen=True, slots=True)
class FeatureClass:
    """The feature kinds and building blocks `make_features(df)` outputs."""

    kinds: tuple[str, ...] = ()  # keys of FEATURE_KIND_BLOCK, in that order
    is_custom: bool | None = None  # None when the source does not parse or defines no make_features

    @property
    def blocks(self) -> tuple[str, ...]:
        used = {FEATURE_KIND_BLOCK[kind] for kind in self.kinds}
        return tuple(block for block in FEATURE_BLOCKS if block in used)


@dataclass(frozen=True, slots=True)
class Classification:
    """What one experiment tried: its model and its features."""

    model: ModelClass
    features: FeatureClass = field(default_factory=FeatureClass)

    @property
    def model_family(self) -> str:
        """The value of `Experience.model_family`."""
        return self.model.label

    @property
    def custom_features(self) -> bool | None:
        """The value of `Experience.custom_features`."""
        return self.features.is_custom

    @property
    def cells(self) -> tuple[Cell, ...]:
        """The grid cells this experiment occupies: one per feature building block, under its model family.

        Empty when the model family is unknown or `make_features` could not be read: there is no
        choice to place. Features in which the reader finds no operation (`return df`) are raw
        columns, the "other" block.
        """
        if self.model.family == "unknown" or self.features.is_custom is None:
            return ()
        return tuple((self.model_family, block) for block in self.features.blocks or ("other",))


def classify(spec: ExperimentSpec) -> Classification:
    """Classify an experiment's model and features."""
    return Classification(classify_model(spec.model), classify_features(spec.features))


@lru_cache(maxsize=4096)  # the reward and the archive classify every earlier experiment of the run each cycle
def classify_spec_json(spec_json: str) -> Classification:
    """Classify an experiment stored as JSON (the buffer's `spec_json`)."""
    payload = json.loads(spec_json)
    return Classification(classify_model(payload["model"]), classify_features(payload["features"]))


def classify_model(source: str) -> ModelClass:
    """The family of the model `make_model()` in `source` returns ("unknown" if there is none to read)."""
    try:
        tree = parse_python(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: null bytes in the source
        return ModelClass("unknown")
    return _ModelReader(tree).read()


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


# ---------------------------------------------------------------------------------------------
# Models

_FAMILY_PACKAGES = frozenset({"lightgbm", "xgboost", "torch", "statsmodels"})
# Classes of sklearn.ensemble and sklearn.discriminant_analysis, whose module does not say the kind.
_SKLEARN_KIND_BY_CLASS = {
    "RandomForestClassifier": "trees",
    "RandomForestRegressor": "trees",
    "ExtraTreesClassifier": "trees",
    "ExtraTreesRegressor": "trees",
    "GradientBoostingClassifier": "boosting",
    "GradientBoostingRegressor": "boosting",
    "HistGradientBoostingClassifier": "boosting",
    "HistGradientBoostingRegressor": "boosting",
    "AdaBoostClassifier": "boosting",  # boosting whatever its base estimator
    "AdaBoostRegressor": "boosting",
    "IsolationForest": "other",
    "LinearDiscriminantAnalysis": "linear",
    "QuadraticDiscriminantAnalysis": "other",
}
_SKLEARN_KIND_BY_MODULE = {
    "tree": "trees",
    "linear_model": "linear",
    "neighbors": "knn",
    "svm": "svm",
    "neural_network": "mlp",
    "naive_bayes": "naive_bayes",
    "dummy": "other",
    "gaussian_process": "other",
    "kernel_ridge": "other",
    "semi_supervised": "other",
    "isotonic": "other",
}
# Meta-estimators around one estimator: the wrapped estimator decides; the value is the kind of
# the default estimator when none is passed (None: there is no default).
_SKLEARN_WRAPPERS: dict[str, str | None] = {
    "CalibratedClassifierCV": "svm",  # default: LinearSVC
    "BaggingClassifier": "trees",  # default: DecisionTree
    "BaggingRegressor": "trees",
    "OneVsRestClassifier": None,
    "OneVsOneClassifier": None,
    "OutputCodeClassifier": None,
    "MultiOutputClassifier": None,
    "MultiOutputRegressor": None,
    "ClassifierChain": None,
    "RegressorChain": None,
    "GridSearchCV": None,
    "RandomizedSearchCV": None,
    "HalvingGridSearchCV": None,
    "HalvingRandomSearchCV": None,
    "TunedThresholdClassifierCV": None,
    "FixedThresholdClassifier": None,
    "FrozenEstimator": None,
    "SelfTrainingClassifier": None,
    "TransformedTargetRegressor": None,
}
_WRAPPED_KEYWORDS = ("estimator", "base_estimator", "regressor", "classifier")
_SKLEARN_ENSEMBLES = frozenset({"VotingClassifier", "VotingRegressor", "StackingClassifier", "StackingRegressor"})
_SKLEARN_PIPELINES = frozenset({"Pipeline", "make_pipeline"})
# Methods that return the estimator they are called on (`LGBMClassifier().set_params(...)`).
_SELF_RETURNING_METHODS = frozenset({"set_params", "set_output", "fit"})
_SCOPES = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_FAR = (1 << 30, 0)  # a position after every statement: an enclosing scope's assignments all count

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


class _ModelReader:
    """Evaluates expressions of one module to the model family they build (None: not a model)."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.aliases = _import_aliases(tree)
        self.definitions = _definitions(tree)
        self.scope_of: dict[ast.AST, ast.AST] = {}
        _map_scopes(tree, tree, self.scope_of)
        self._assignments: dict[ast.AST, list[tuple[tuple[int, int], str, ast.expr]]] = {}
        self._active: set[ast.AST] = set()  # nodes being evaluated: guards against recursion

    def read(self) -> ModelClass:
        make_model = self.definitions.get("make_model")
        if isinstance(make_model, ast.ClassDef):
            return self._read_class(make_model, None)
        if make_model is not None:
            return self._returned(make_model) or ModelClass("other")
        lambda_value = self._module_lambda("make_model")
        if lambda_value is not None:
            return self.evaluate(lambda_value.body) or ModelClass("other")
        return ModelClass("unknown")

    def evaluate(self, node: ast.expr) -> ModelClass | None:
        if node in self._active:
            return None
        self._active.add(node)
        try:
            return self._evaluate(node)
        finally:
            self._active.discard(node)

    def _evaluate(self, node: ast.expr) -> ModelClass | None:
        match node:
            case ast.Call():
                return self._call(node)
            case ast.Name():
                value = self._assigned_value(node)
                return self.evaluate(value) if value is not None else self._reference(node)
            case ast.Attribute():
                qualname = self._qualname(node)
                return self._from_qualname(qualname, None) if qualname else None
            case ast.IfExp():
                return self.evaluate(node.body) or self.evaluate(node.orelse)
            case ast.NamedExpr():
                return self.evaluate(node.value)
            case ast.Subscript():
                item = self._item(node)
                return self.evaluate(item) if item is not None else None
        return None

    def _call(self, call: ast.Call) -> ModelClass | None:
        func = call.func
        if isinstance(func, ast.Name):
            definition = self.definitions.get(func.id)
            if isinstance(definition, ast.ClassDef):
                return self._read_class(definition, call)
            if definition is not None:
                return self._returned(definition)
            value = self._assigned_value(func)
            if value is not None:  # a variable holding a class: calling it builds one
                return self.evaluate(value)
        qualname = self._qualname(func)
        if qualname is not None:
            return self._from_qualname(qualname, call)
        if isinstance(func, ast.Attribute) and func.attr in _SELF_RETURNING_METHODS:
            return self.evaluate(func.value)
        return None

    def _reference(self, name: ast.Name) -> ModelClass | None:
        """A name that no assignment binds: a local class, or something imported."""
        definition = self.definitions.get(name.id)
        if isinstance(definition, ast.ClassDef):
            return self._read_class(definition, None)
        qualname = self.aliases.get(name.id)
        return self._from_qualname(qualname, None) if qualname else None

    def _from_qualname(self, qualname: str, call: ast.Call | None) -> ModelClass | None:
        package = qualname.partition(".")[0]
        if package in _FAMILY_PACKAGES:
            return ModelClass(package, estimator=qualname)
        if package == "sklearn":
            return self._sklearn(qualname, call)
        return None

    def _sklearn(self, qualname: str, call: ast.Call | None) -> ModelClass | None:
        parts = qualname.split(".")
        name, module = parts[-1], parts[1] if len(parts) > 2 else ""
        if name in _SKLEARN_PIPELINES:
            # Transformers are not models, so the last model among the steps is the final estimator.
            steps = [*call.args, *(k.value for k in call.keywords if k.arg == "steps")] if call else []
            models = self._models_in(steps)
            return models[-1] if models else None
        if name == "clone":
            return self.evaluate(call.args[0]) if call and call.args else None
        if name in _SKLEARN_WRAPPERS:
            wrapped = _argument(call, _WRAPPED_KEYWORDS)
            inner = self.evaluate(wrapped) if wrapped is not None else None
            return inner or ModelClass("sklearn", _SKLEARN_WRAPPERS[name] or "other", estimator=qualname)
        if name in _SKLEARN_ENSEMBLES:
            estimators = _argument(call, ("estimators",))
            members = self._models_in([estimators]) if estimators is not None else []
            return _combine(members, qualname) or ModelClass("ensemble", estimator=qualname)
        kind = _SKLEARN_KIND_BY_CLASS.get(name) or _SKLEARN_KIND_BY_MODULE.get(module)
        return ModelClass("sklearn", kind, estimator=qualname) if kind else None

    def _read_class(self, cls: ast.ClassDef, call: ast.Call | None) -> ModelClass | None:
        """A user class is every model it inherits from, builds in its body, or is given."""
        if cls in self._active:
            return None
        self._active.add(cls)
        try:
            arguments = [*call.args, *(k.value for k in call.keywords)] if call else []
            models = self._models_in([*cls.bases, *arguments]) + self._models_in(cls.body, follow_names=False)
        finally:
            self._active.discard(cls)
        return _combine(models, cls.name) or ModelClass("other", estimator=cls.name)

    def _returned(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> ModelClass | None:
        """What a function returns; when its returns disagree, the most frequent (then the first)."""
        if function in self._active:
            return None
        self._active.add(function)
        try:
            models = [m for node in _returns(function) if (m := self.evaluate(node)) is not None]
        finally:
            self._active.discard(function)
        if not models:
            return None
        counts = Counter(m.label for m in models)
        return max(models, key=lambda m: counts[m.label])

    def _models_in(self, nodes: Iterable[ast.AST], *, follow_names: bool = True) -> list[ModelClass]:
        """The outermost models built in `nodes`, in source order.

        `follow_names` also reads what a variable holds (a list of `(name, estimator)` pairs built
        earlier, or appended to); in a class body the names are method locals, not worth following.
        """
        found: list[ModelClass] = []

        def visit(node: ast.AST) -> None:
            if node in self._active:
                return
            if isinstance(node, ast.Name):
                value = self._assigned_value(node) if follow_names else None
                if value is None:
                    model = self._reference(node)
                    found.extend([model] if model else [])
                    return
                self._active.add(node)
                try:
                    for part in [value, *self._appended(node)]:
                        visit(part)
                finally:
                    self._active.discard(node)
                return
            if isinstance(node, ast.Call | ast.Attribute | ast.Subscript | ast.IfExp):
                model = self.evaluate(node)
                if model is not None:
                    found.append(model)
                    return
            for child in ast.iter_child_nodes(node):
                visit(child)

        for node in nodes:
            visit(node)
        return found

    def _qualname(self, node: ast.expr) -> str | None:
        """`lgb.LGBMClassifier` -> "lightgbm.LGBMClassifier", through the import aliases."""
        if isinstance(node, ast.Name):
            return None if node.id in self.definitions else self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def _assigned_value(self, name: ast.Name) -> ast.expr | None:
        """The value last assigned to `name` before it is read, in its scope or an enclosing one."""
        scope = self.scope_of.get(name, self.tree)
        position = (name.lineno, name.col_offset)
        while True:
            values = [v for (end, target, v) in self._scope_assignments(scope) if target == name.id and end <= position]
            if values:
                return values[-1]
            if isinstance(scope, ast.Module):
                return None
            scope, position = self.scope_of.get(scope, self.tree), _FAR

    def _appended(self, name: ast.Name) -> list[ast.expr]:
        """Arguments of `name.append(...)` / `name.extend(...)` in the scope where `name` is read."""
        scope = self.scope_of.get(name, self.tree)
        calls = [
            node
            for node in _walk_scope(scope)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("append", "extend")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name.id
        ]
        calls.sort(key=lambda call: (call.lineno, call.col_offset))
        return [argument for call in calls for argument in call.args]

    def _item(self, node: ast.Subscript) -> ast.expr | None:
        """`MODELS["lgb"]` or `models[0]`, when the container is a literal the source assigns."""
        container = self._assigned_value(node.value) if isinstance(node.value, ast.Name) else node.value
        key = node.slice
        if not isinstance(key, ast.Constant):
            return None
        if isinstance(container, ast.Dict):
            for dict_key, value in zip(container.keys, container.values, strict=True):
                if isinstance(dict_key, ast.Constant) and dict_key.value == key.value:
                    return value
        is_sequence = isinstance(container, ast.List | ast.Tuple) and isinstance(key.value, int)
        if is_sequence and -len(container.elts) <= key.value < len(container.elts):
            return container.elts[key.value]
        return None

    def _scope_assignments(self, scope: ast.AST) -> list[tuple[tuple[int, int], str, ast.expr]]:
        """(end position, name, value) of every plain assignment in `scope`, in source order."""
        if scope not in self._assignments:
            found: list[tuple[tuple[int, int], str, ast.expr]] = []
            for node in _walk_scope(scope):
                if isinstance(node, ast.Assign):
                    pairs = [pair for target in node.targets for pair in _bindings(target, node.value)]
                elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
                    pairs = _bindings(node.target, node.value)
                else:
                    continue
                end = (node.end_lineno or 0, node.end_col_offset or 0)
                found.extend((end, name, value) for name, value in pairs)
            self._assignments[scope] = sorted(found, key=lambda item: item[0])
        return self._assignments[scope]

    def _module_lambda(self, name: str) -> ast.Lambda | None:
        for statement in reversed(self.tree.body):
            is_lambda = isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Lambda)
            if is_lambda and any(isinstance(t, ast.Name) and t.id == name for t in statement.targets):
                return statement.value
        return None


def _combine(models: list[ModelClass], estimator: str) -> ModelClass | None:
    """One family if all models share it, else an ensemble of the distinct members."""
    labels: list[str] = []
    for model in models:
        for label in model.members or (model.label,):
            if label not in labels:
                labels.append(label)
    if not labels:
        return None
    if len(labels) == 1:
        return next(m for m in models if m.label == labels[0])
    return ModelClass("ensemble", members=tuple(labels), estimator=estimator)


def _argument(call: ast.Call | None, keywords: tuple[str, ...], position: int = 0) -> ast.expr | None:
    """The keyword argument named in `keywords`, else the positional argument at `position`."""
    if call is None:
        return None
    for keyword in call.keywords:
        if keyword.arg in keywords:
            return keyword.value
    return call.args[position] if len(call.args) > position else None


def _import_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> qualified name for every import statement (comments and strings hold none)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:  # `import sklearn.ensemble` binds `sklearn`
                    top = alias.name.partition(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _definitions(tree: ast.Module) -> dict[str, Definition]:
    """Functions and classes by name; a module-level definition wins over a nested one."""
    definitions: dict[str, Definition] = {}
    for node in ast.walk(tree):
        if isinstance(node, _DEFINITIONS):
            definitions.setdefault(node.name, node)
    for node in tree.body:
        if isinstance(node, _DEFINITIONS):
            definitions[node.name] = node
    return definitions


def _map_scopes(node: ast.AST, scope: ast.AST, scope_of: dict[ast.AST, ast.AST]) -> None:
    """Record the innermost function (or the module) that each node belongs to."""
    for child in ast.iter_child_nodes(node):
        scope_of[child] = scope
        _map_scopes(child, child if isinstance(child, _SCOPES) else scope, scope_of)


def _walk_scope(scope: ast.AST) -> Iterator[ast.AST]:
    """Every node of a scope's own body, not descending into nested functions or classes."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (*_SCOPES, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


def _returns(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.expr]:
    """Returned expressions of a function itself, in source order."""
    returns = sorted(
        (n for n in _walk_scope(function) if isinstance(n, ast.Return)), key=lambda r: (r.lineno, r.col_offset)
    )
    return [r.value for r in returns if r.value is not None]


def _bindings(target: ast.expr, value: ast.expr) -> list[tuple[str, ast.expr]]:
    """Names bound by `target = value`, pairing tuple targets with tuple values element-wise."""
    if isinstance(target, ast.Name):
        return [(target.id, value)]
    paired = isinstance(target, ast.Tuple | ast.List) and isinstance(value, ast.Tuple | ast.List)
    if paired and len(target.elts) == len(value.elts):
        return [pair for t, v in zip(target.elts, value.elts, strict=True) for pair in _bindings(t, v)]
    return []


# ---------------------------------------------------------------------------------------------
# Features


@dataclass
class _State:
    """What one function body has bound so far: signals per variable, items per list variable."""

    env: dict[str, frozenset[str]]
    items: dict[str, list[frozenset[str]]] = field(default_factory=dict)
    selections: dict[str, frozenset[str]] = field(default_factory=dict)  # see `_selection_signals`


class _FeatureReader:
    """Collects the signal set (operations and columns it derives from) of every feature output."""

    def __init__(self, tree: ast.Module) -> None:
        self.functions = {name: node for name, node in _definitions(tree).items() if not isinstance(node, ast.ClassDef)}
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
        for argument in arguments:
            signals |= self._signals(argument, state)
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
        for argument in call.args:
            if method == "extend" and isinstance(argument, ast.List | ast.Tuple):
                items.extend(self._signals(e, state) for e in argument.elts)
            else:
                items.append(self._signals(argument, state))
            state.env[name] = state.env.get(name, frozenset()) | items[-1]

    def _frame_outputs(self, call: ast.Call, state: _State) -> None:
        """Each column of `pd.DataFrame({...})` / `pd.concat([...])` is one output."""
        data = _argument(call, ("data", "objs"))
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
    if method == "unstack" and (not (call.args or call.keywords) or _level_of(_argument(call, ("level",))) == "symbol"):
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
        return _level_of(_argument(node, ("level",), position=2)) == "symbol"
    return False


def _grouping_level(node: ast.expr) -> str | None:
    """The index level `node.groupby(...)` groups by ("timestamp" or "symbol"), if `node` is such a call."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "groupby":
        return _level_of(_argument(node, ("level", "by")))
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
        if isinstance(statement, _DEFINITIONS):
            continue
        for block in ("body", "orelse", "finalbody"):
            yield from _flat_statements(getattr(statement, block, []))
        for handler in getattr(statement, "handlers", []):
            yield from _flat_statements(handler.body)
