"""Deterministic descriptions of functions, so a swapped lambda is a different experiment.

A scheduler's ``lr_lambda`` (or a function kept among the hyperparameters) defines the
experiment as much as a number does: ``lambda e: 0.97 ** e`` and ``lambda e: 0.5 ** e`` must
not give the same hash, and the same function must give the same hash in every process. So a
callable is described by what it computes, never by its address:

- a Python function: its qualified name, a digest of its bytecode, constants and the names it
  uses (nested code objects included), its default arguments, the values of its closure cells
  and the plain values (numbers, strings) of the globals it reads;
- a ``functools.partial``: the function and the bound arguments;
- a bound method: the function and the class of the object it is bound to;
- a builtin (``math.exp``): its qualified name;
- an object with ``__call__``: its class and its attributes.

Cell and argument values are described with the same canonical form as any hyperparameter
(recursively, so a partial of a closure of a partial is described all the way down). File names
and line numbers are left out: moving a function in its file is not a new experiment. A value
that cannot be described raises :class:`NotDescribableError` naming the key, never a silent
constant.
"""

from __future__ import annotations

import functools
import hashlib
import types
from collections.abc import Callable
from typing import Any

from .errors import NotDescribableError

__all__ = ["describe_callable"]

Describe = Callable[[Any, str], Any]

_PLAIN = (type(None), bool, int, float, str, bytes)


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
    return f"{module}.{name}" if module else name


def _digest_code(code: types.CodeType, sha: Any) -> None:
    sha.update(code.co_code)
    sha.update(repr(code.co_names).encode())
    sha.update(repr((code.co_argcount, code.co_kwonlyargcount, code.co_flags & 0x0F)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _digest_code(const, sha)
        else:
            sha.update(repr((type(const).__name__, const)).encode())


def code_digest(code: types.CodeType) -> str:
    """SHA-256 (16 hex characters) of bytecode, constants and names, recursively."""
    sha = hashlib.sha256()
    _digest_code(code, sha)
    return sha.hexdigest()[:16]


def _global_names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return names


def _describe_function(fn: types.FunctionType, key: str, describe: Describe) -> dict[str, Any]:
    code = fn.__code__
    entry: dict[str, Any] = {"function": _qualname(fn), "code": code_digest(code)}
    if fn.__defaults__:
        entry["defaults"] = describe(list(fn.__defaults__), f"{key}.defaults")
    if fn.__kwdefaults__:
        entry["kwdefaults"] = describe(dict(fn.__kwdefaults__), f"{key}.kwdefaults")
    if fn.__closure__:
        cells = {}
        for name, cell in zip(code.co_freevars, fn.__closure__, strict=True):
            try:
                value = cell.cell_contents
            except ValueError:
                cells[name] = "<empty cell>"
                continue
            cells[name] = describe(value, f"{key}.<closure {name}>")
        entry["closure"] = cells
    plain = {}
    for name in sorted(set(_global_names(code))):
        value = fn.__globals__.get(name, None)
        if type(value) in _PLAIN and name in fn.__globals__:
            plain[name] = describe(value, f"{key}.<global {name}>")
    if plain:
        entry["globals"] = plain
    return entry


def describe_callable(fn: Any, key: str, describe: Describe) -> Any:
    """A deterministic description of ``fn``; ``describe`` describes argument and cell values."""
    if isinstance(fn, functools.partial):
        return {
            "partial": describe(fn.func, f"{key}.func"),
            "args": describe(list(fn.args), f"{key}.args"),
            "keywords": describe(dict(fn.keywords), f"{key}.keywords"),
        }
    if isinstance(fn, types.MethodType):
        return {"method": describe(fn.__func__, key), "bound_to": _qualname(type(fn.__self__))}
    if isinstance(fn, types.FunctionType):
        return _describe_function(fn, key, describe)
    if isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType, type)):
        return {"function": _qualname(fn)}
    if isinstance(fn, (staticmethod, classmethod)):
        return describe(fn.__func__, key)
    attributes = getattr(fn, "__dict__", None)
    if attributes is not None:
        return {"callable": _qualname(type(fn)), "attributes": describe(dict(attributes), f"{key}.<attributes>")}
    raise NotDescribableError(
        f"{key!r} is a {type(fn).__name__} that cannot be described deterministically "
        "(no code, no attributes); register a plain function, a functools.partial or a value instead"
    )
