"""Finite-difference residuals in DiffusionPDE's style, with the correct 1/h and 1/h^2 scaling.

A named baseline for comparisons, never the default: the weak-form operator of
``piddm_fem.residual`` is the residual of record. Each problem declares its strong form as a short
expression in its metadata (``Problem.fd_residual``, stored with the dataset), e.g.

    "-(a * lap(u) + dx(a) * dx(u) + dy(a) * dy(u)) - f"

in the channel names, the problem's parameters, numbers, + - * / ** and the central differences
dx, dy, dxx, dyy and lap (= dxx + dyy) of a channel, on the S x S grid with h = 1/(S - 1) along
both axes (y is time for a space-time problem). The expression is parsed, never executed: only
those names and operations are accepted. Interior nodes get the stencil; Dirichlet rows get u - g
(``bc_mask``, ``bc_values``, as the weak-form operator) and the other boundary nodes 0. torch only;
x is [B, C, S, S] in physical units.
"""

from __future__ import annotations

import ast
import operator as op

import torch

from piddm_fem.errors import PiddmError

_BINARY = {ast.Add: op.add, ast.Sub: op.sub, ast.Mult: op.mul, ast.Div: op.truediv, ast.Pow: op.pow}
_UNARY = {ast.USub: op.neg, ast.UAdd: op.pos}


def _difference(f: torch.Tensor, name: str, h: float) -> torch.Tensor:
    """Central difference ``name`` of f [B, S, S] at the interior nodes [B, S-2, S-2]."""
    c = f[:, 1:-1, 1:-1]
    x_plus, x_minus = f[:, 1:-1, 2:], f[:, 1:-1, :-2]
    y_plus, y_minus = f[:, 2:, 1:-1], f[:, :-2, 1:-1]
    return {"dx": lambda: (x_plus - x_minus) / (2 * h), "dy": lambda: (y_plus - y_minus) / (2 * h),
            "dxx": lambda: (x_plus - 2 * c + x_minus) / h**2, "dyy": lambda: (y_plus - 2 * c + y_minus) / h**2,
            "lap": lambda: (x_plus + x_minus + y_plus + y_minus - 4 * c) / h**2}[name]()


def check_expression(expression: str, channels, params: dict) -> ast.Expression:
    """Parse ``expression``; raise naming the first construct that is not allowed."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise PiddmError(f"finite-difference residual {expression!r} is not an expression; fix the "
                         "problem's fd_residual") from None
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Expression, ast.Load, ast.Constant, ast.BinOp, ast.UnaryOp,
                               *_BINARY, *_UNARY))
        if isinstance(node, ast.Name):
            ok = node.id in channels or node.id in params or node.id in ("dx", "dy", "dxx", "dyy", "lap")
        if isinstance(node, ast.Call):
            ok = (isinstance(node.func, ast.Name) and node.func.id in ("dx", "dy", "dxx", "dyy", "lap")
                  and len(node.args) == 1 and not node.keywords and isinstance(node.args[0], ast.Name)
                  and node.args[0].id in channels)
        if isinstance(node, ast.Constant):
            ok = isinstance(node.value, (int, float))
        if not ok:
            raise PiddmError(f"finite-difference residual {expression!r}: {ast.unparse(node)!r} is not "
                             f"a number, a channel of {list(channels)}, a parameter of {sorted(params)} "
                             "or dx/dy/dxx/dyy/lap of a channel")
    return tree


def fd_residual(x: torch.Tensor, expression: str | None, channels, params: dict, unknown: int,
                bc_mask: torch.Tensor | None = None, bc_values: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 1, S, S] finite-difference strong residual of ``expression`` (module doc)."""
    if expression is None:
        raise PiddmError("this problem declares no finite-difference residual (fd_residual); "
                         "use the weak-form operator")
    channels = list(channels)
    tree = check_expression(expression, channels, params)
    B, _, S, _ = x.shape
    h = 1.0 / (S - 1)

    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return x[:, channels.index(node.id), 1:-1, 1:-1] if node.id in channels else params[node.id]
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](value(node.operand))
        return _difference(x[:, channels.index(node.args[0].id)], node.func.id, h)  # a Call

    r = torch.zeros(B, S, S, dtype=x.dtype, device=x.device)
    if bc_mask is not None:
        g = bc_values.to(x.dtype).reshape(S, S)
        r = torch.where(bc_mask.reshape(S, S), x[:, unknown] - g, r)
    r[:, 1:-1, 1:-1] = value(tree)
    return r.unsqueeze(1)
