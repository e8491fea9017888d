"""The model family of an experiment: what `make_model()` *returns*, read from the syntax tree.

The reader follows import aliases
(`import lightgbm as lgb`, `from sklearn import ensemble as ens`), local variables, helper
functions and classes defined in the same source, scikit-learn pipelines (the final estimator
decides), wrappers (`CalibratedClassifierCV(LGBMClassifier())` is LightGBM) and ensembles (a
`VotingClassifier` of several families is "ensemble", with its members listed). A user class
counts as every model family it builds anywhere in its body or inherits from (`nn.Module` is
torch). Imports that only appear in comments or strings are not in the tree; imports that the
returned model does not use do not matter.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sharpe_rl.syntax import argument, definitions, parse_python


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


def classify_model(source: str) -> ModelClass:
    """The family of the model `make_model()` in `source` returns ("unknown" if there is none to read)."""
    try:
        tree = parse_python(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: null bytes in the source
        return ModelClass("unknown")
    return _ModelReader(tree).read()


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
_FAR = (1 << 30, 0)  # a position after every statement: an enclosing scope's assignments all count


class _ModelReader:
    """Evaluates expressions of one module to the model family they build (None: not a model)."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.aliases = _import_aliases(tree)
        self.definitions = definitions(tree)
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
            wrapped = argument(call, _WRAPPED_KEYWORDS)
            inner = self.evaluate(wrapped) if wrapped is not None else None
            return inner or ModelClass("sklearn", _SKLEARN_WRAPPERS[name] or "other", estimator=qualname)
        if name in _SKLEARN_ENSEMBLES:
            estimators = argument(call, ("estimators",))
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
