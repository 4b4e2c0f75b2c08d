"""Event selection expressions, e.g. ``njets >= 2 and met > 20``.

The expression is parsed with ``ast`` and only a small whitelist of syntax is allowed (comparisons,
arithmetic, boolean logic, a few reductions), so a config cannot run arbitrary code.  Python's
``and``/``or``/``not`` are rewritten to element-wise ``&``/``|``/``~`` so they work on arrays.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from payload.errors import ConfigError, InconsistentDataError

# Reductions over the objects of each event turn a jagged condition into one value per event.
FUNCTIONS: dict[str, Any] = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "log": np.log,
    "exp": np.exp,
    "cos": np.cos,
    "sin": np.sin,
    "any": lambda x: ak.any(x, axis=-1),
    "all": lambda x: ak.all(x, axis=-1),
    "sum": lambda x: ak.sum(x, axis=-1),
    "max": lambda x: ak.max(x, axis=-1),
    "min": lambda x: ak.min(x, axis=-1),
    "count": lambda x: ak.num(x, axis=-1),
}

_ALLOWED = (
    ast.Expression,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.And,
    ast.Or,
    ast.Not,
    ast.Invert,
    ast.USub,
    ast.UAdd,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Mod,
    ast.Pow,
    ast.BitAnd,
    ast.BitOr,
    ast.BitXor,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)


class _ElementWise(ast.NodeTransformer):
    """Rewrite Python's short-circuit logic into element-wise operators."""

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        op = ast.BitAnd() if isinstance(node.op, ast.And) else ast.BitOr()
        result = node.values[0]
        for value in node.values[1:]:
            result = ast.BinOp(left=result, op=op, right=value)
        return result

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            return ast.UnaryOp(op=ast.Invert(), operand=node.operand)
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        # a < b < c  ->  (a < b) & (b < c): chained comparisons short-circuit in Python.
        self.generic_visit(node)
        if len(node.ops) == 1:
            return node
        parts = []
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            parts.append(ast.Compare(left=left, ops=[op], comparators=[right]))
            left = right
        result = parts[0]
        for part in parts[1:]:
            result = ast.BinOp(left=result, op=ast.BitAnd(), right=part)  # type: ignore[assignment]
        return result


@dataclass(frozen=True)
class Selection:
    expression: str
    branches: tuple[str, ...]
    _code: Any

    def evaluate(self, arrays: dict[str, Any]) -> np.ndarray:
        """One boolean per event."""
        namespace = {name: arrays[name] for name in self.branches}
        # Safe: the code comes from a whitelisted AST, run without builtins.
        result = eval(self._code, {"__builtins__": {}}, {**FUNCTIONS, **namespace})
        if isinstance(result, ak.Array) and result.ndim > 1:
            raise InconsistentDataError(
                f"selection {self.expression!r} gives one value per object, not per event: "
                "wrap object conditions in any(...) or all(...)"
            )
        mask = np.asarray(ak.to_numpy(result) if isinstance(result, ak.Array) else result)
        if mask.dtype != np.bool_:
            raise ConfigError(
                f"selection {self.expression!r} must be a condition (true/false), got {mask.dtype} values"
            )
        return mask


#: Bounds on what a selection may ask: a config is untrusted input (a bundle's config too), and
#: Python folds constant expressions such as 9**9**9**9 at compile time, for ever.
MAX_LENGTH = 2000
MAX_NODES = 300
MAX_CONSTANT = 1e15
MAX_EXPONENT = 16
MAX_DEPTH = 50  # nested brackets: the parser recurses per bracket


def _check_limits(expression: str, tree: ast.AST) -> None:
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ConfigError(
            f"selection {expression[:60]!r}...: {len(nodes)} syntax nodes, more than the limit {MAX_NODES}"
        )
    for node in nodes:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)):
                raise ConfigError(f"selection {expression!r}: only numbers may appear as constants")
            if abs(node.value) > MAX_CONSTANT:
                raise ConfigError(
                    f"selection {expression!r}: constant {node.value!r} is beyond the limit {MAX_CONSTANT:g}"
                )
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exponent = node.right
            if isinstance(exponent, ast.UnaryOp) and isinstance(exponent.op, (ast.USub, ast.UAdd)):
                exponent = exponent.operand
            if not (isinstance(exponent, ast.Constant) and abs(exponent.value) <= MAX_EXPONENT):  # type: ignore[arg-type]
                raise ConfigError(
                    f"selection {expression!r}: a power needs a constant exponent of at most "
                    f"{MAX_EXPONENT} (e.g. pt**2)"
                )


def compile_selection(expression: str) -> Selection:
    """Parse and check a selection; the branches it reads are collected for the reader."""
    if len(expression) > MAX_LENGTH:
        raise ConfigError(f"selection: {len(expression)} characters, more than the limit {MAX_LENGTH}")
    depth = deepest = 0
    for char in expression:  # bounded before parsing
        depth += (char in "([{") - (char in ")]}")
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        raise ConfigError(
            f"selection {expression[:60]!r}...: brackets nested {deepest} deep, more than the limit {MAX_DEPTH}"
        )
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"selection {expression!r}: not a valid expression ({err.msg})") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"selection {expression[:60]!r}...: nested too deeply") from None
    branches: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ConfigError(f"selection {expression!r}: {type(node).__name__} is not allowed in a selection")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise ConfigError(
                    f"selection {expression!r}: only these functions are allowed: {', '.join(sorted(FUNCTIONS))}"
                )
        elif isinstance(node, ast.Name) and node.id not in FUNCTIONS and node.id not in branches:
            branches.append(node.id)
    _check_limits(expression, tree)
    tree = ast.fix_missing_locations(_ElementWise().visit(tree))
    return Selection(expression, tuple(branches), compile(tree, "<selection>", "eval"))
