"""What a view's source says, read for the document: the API errors it can raise and the message it sends.

The view, every function its decorators wrapped and the functions of this package they call are parsed,
never run.
"""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import textwrap
import types
from collections.abc import Callable, Iterator
from typing import Any

from service import errors


def raised_by(view: Callable[..., Any]) -> frozenset[type[errors.APIError]]:
    """The API errors the view, its decorators' wrappers and the service code they call can raise.

    A reading of the source: every call, in this package, to an `APIError` class or to a function whose
    own calls are read in turn. Calls through objects (`presence.current().record`) are not followed.
    """
    found: set[type[errors.APIError]] = set()
    seen: set[Callable[..., Any]] = set()
    todo = list(_layers(view))
    while todo:
        function = todo.pop()
        if function in seen:
            continue
        seen.add(function)
        for target in _calls(function):
            if isinstance(target, type):
                found.add(target)
            else:
                todo.append(target)
    return frozenset(found)


def message_of(view: Callable[..., Any]) -> str | None:
    """The `message=` the view's own code answers with, when it is a plain string."""
    for layer in _layers(view):
        tree = _parse(layer)
        for node in ast.walk(tree) if tree is not None else ():
            if (
                isinstance(node, ast.keyword)
                and node.arg == "message"
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                return node.value.value
    return None


def _layers(view: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """The view and every function its decorators wrapped, outermost first."""
    layer: Callable[..., Any] | None = view
    while layer is not None:
        yield layer
        layer = getattr(layer, "__wrapped__", None)


@functools.cache
def _parse(function: Callable[..., Any]) -> ast.AST | None:
    if not isinstance(function, types.FunctionType) or not function.__module__.startswith("service."):
        return None
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None


@functools.cache
def _calls(function: Callable[..., Any]) -> tuple[Any, ...]:
    """What the function calls that matters here: API error classes and functions of this package."""
    tree = _parse(function)
    if tree is None:
        return ()
    assert isinstance(function, types.FunctionType)
    scope = {**function.__globals__, **inspect.getclosurevars(function).nonlocals}
    targets: list[Any] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = _resolve(node.func, scope)
        is_error = isinstance(target, type) and issubclass(target, errors.APIError)
        if is_error or (isinstance(target, types.FunctionType) and target.__module__.startswith("service.")):
            targets.append(target)
    return tuple(targets)


def _resolve(node: ast.expr, scope: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return scope.get(node.id, getattr(builtins, node.id, None))
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, scope)
        if isinstance(base, types.ModuleType | type):
            return getattr(base, node.attr, None)
    return None
