"""A step's fingerprint: everything its output depends on besides its input, as one digest.

What counts (``fingerprint(step)``):

- **code**: a function's bytecode, constants (nested functions' code too), names and argument layout,
  and the Python it was compiled for; not its file, its line numbers, its comments or its docstring. A
  function of the user's own code also counts what it reaches through its globals, recursively: the
  functions and classes it calls, the constants and objects it reads (a prompt string, a model object),
  but not module-level lists, dicts and sets, which are state (a counter, a memo) rather than settings;
  library code counts by its own bytecode, not what it reaches.
- **values**: what a function closes over, its defaults, the instance a method is bound to, a
  ``functools.partial``'s arguments, the fields of a step (``RunnableLambda``'s function, a
  ``RunnableActor``'s class and arguments, a binding's config...), the state of an object of the user's
  own classes (its ``__dict__``), dataclasses and pydantic models by their fields (secrets left out).
- **LangChain objects** by their serialisable parameters (``to_json()``: the model's name, temperature,
  ``max_tokens``...; secrets are markers there, never values), else by their pydantic fields.

Objects of library classes count by what pickle would rebuild them from (``operator.itemgetter("a")`` by
``"a"``, ``str.upper`` by its name, a numpy ufunc by its name); one that cannot be pickled (a lock, a
socket) by its type; inside a LangChain object, what it does not serialise by its type.

What does not count: how a step runs (Ray options, retries, timeouts, rate limits, the pool size, a step's
name). An object may say what identifies it with a ``cache_identity()`` method (our nodes do): a dict
of what counts (with its class), or another object that stands for it (a wrapper returns the step it wraps).

``code=False`` (``with_cache(version=...)``): the code part is left out (the version stands for it); the
values still count.
"""

from __future__ import annotations

import copyreg
import dataclasses
import enum
import functools
import hashlib
import struct
import sys
import types
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

__all__ = ["fingerprint", "is_user_module"]

MAX_DEPTH = 48  # deeper than this, an object counts by its type (a guard against pathological graphs)
_PRIMITIVES = (type(None), bool, int, float, complex, str, bytes, bytearray)
_SKIPPED_CLASS_ATTRS = frozenset({"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__",
                                  "__annotations__", "__orig_bases__", "__parameters__", "_abc_impl",
                                  "__slotnames__", "__firstlineno__", "__static_attributes__"})
_SECRET_TYPES = frozenset({"SecretStr", "SecretBytes"})
# a function's globals of these types are state (a counter, a memo, a registry), not what it computes with
_STATE_TYPES = (list, dict, set, bytearray)


@lru_cache(maxsize=4096)
def is_user_module(name: str | None) -> bool:
    """Whether ``name`` is the user's own code: ``__main__``, a module shipped by value (not importable
    here), or one whose file is not installed (outside ``site-packages`` and the standard library).
    rayrunnables itself is a library."""
    if not name:
        return False
    if name in ("__main__", "__mp_main__"):
        return True
    top = name.partition(".")[0]
    if top in ("rayrunnables", "builtins") or top in getattr(sys, "stdlib_module_names", ()):
        return False
    module = sys.modules.get(name)
    if module is None:  # a function that arrived by value (cloudpickle): the user's own
        return True
    file = getattr(module, "__file__", None)
    if file is None:
        return False
    return not ({"site-packages", "dist-packages"} & set(Path(file).parts))


def fingerprint(obj: Any, *, code: bool = True) -> str:
    """The hex digest of ``obj`` (a step, a function, any value) as described above."""
    walker = _Walker(code)
    walker.walk(obj, 0)
    return walker.hash.hexdigest()


class _Walker:
    """Feeds one sha256 with tagged, length-prefixed tokens. A value met again on its own way down (a
    cycle) counts by its type; a function or class counts by its digest, taken once per walk (so a helper
    called from many places is walked once). Shared values are walked wherever they appear: whether two
    references are one object may differ in another process (after pickling), their values do not."""

    def __init__(self, code: bool, memo: dict[int, bytes] | None = None, keep: list[Any] | None = None) -> None:
        self.code = code
        self.hash = hashlib.sha256()
        self.memo: dict[int, bytes] = {} if memo is None else memo
        self.keep: list[Any] = [] if keep is None else keep  # what ids refer to stays alive while we walk
        self.stack: set[int] = set()
        self.opaque = 0  # > 0 while walking what a LangChain object serialises

    def token(self, tag: str, payload: bytes = b"") -> None:
        self.hash.update(tag.encode() + struct.pack(">Q", len(payload)) + payload)

    def text(self, tag: str, value: str) -> None:
        self.token(tag, value.encode("utf-8", "surrogatepass"))

    def sub_digest(self, obj: Any, depth: int = 0) -> bytes:
        """``obj``'s digest on its own (to order the members of a set or the keys of a dict)."""
        walker = _Walker(self.code, self.memo, self.keep)
        walker.stack = self.stack
        walker.walk(obj, depth)
        return walker.hash.digest()

    # ---- the dispatch ------------------------------------------------------------------------------------
    def walk(self, obj: Any, depth: int) -> None:
        kind = type(obj)
        if kind in _PRIMITIVES:
            self.text("p:" + kind.__name__, repr(obj) if kind is not float else float.hex(obj))
            return
        if depth > MAX_DEPTH or id(obj) in self.stack:
            self.text("cycle" if depth <= MAX_DEPTH else "deep", f"{kind.__module__}.{kind.__qualname__}")
            return
        self.keep.append(obj)
        if isinstance(obj, (type, types.FunctionType)):
            digest = self.memo.get(id(obj))
            if digest is None:
                walker = _Walker(self.code, self.memo, self.keep)
                walker.stack = self.stack
                self.stack.add(id(obj))
                try:
                    walker.dispatch(obj, kind, depth + 1)
                finally:
                    self.stack.discard(id(obj))
                digest = self.memo[id(obj)] = walker.hash.digest()
            self.token("digest", digest)
            return
        self.stack.add(id(obj))
        try:
            self.dispatch(obj, kind, depth + 1)
        finally:
            self.stack.discard(id(obj))

    def dispatch(self, obj: Any, kind: type, depth: int) -> None:
        if kind in (list, tuple):
            self.sequence(kind.__name__, obj, depth)
        elif kind is dict or kind is types.MappingProxyType or (
                isinstance(obj, dict) and kind.__module__ in ("collections", "builtins")):
            self.mapping(obj, depth)
        elif kind in (set, frozenset):
            self.token("set", b"".join(sorted(self.sub_digest(v, depth) for v in obj)))
        elif isinstance(obj, type):
            self.klass(obj, depth)
        elif isinstance(obj, types.FunctionType):
            self.function(obj, depth)
        elif isinstance(obj, types.MethodType):
            self.text("method", obj.__func__.__name__)
            self.walk(obj.__self__, depth)
            self.walk(obj.__func__, depth)
        elif isinstance(obj, functools.partial):
            self.token("partial")
            self.walk(obj.func, depth)
            self.walk(obj.args, depth)
            self.walk(obj.keywords, depth)
        elif isinstance(obj, types.CodeType):
            self.code_of(obj, depth)
        elif isinstance(obj, types.ModuleType):
            self.text("module", obj.__name__)
        elif isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            self.text("builtin", f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', obj)}")
            owner = getattr(obj, "__self__", None)
            if owner is not None and not isinstance(owner, types.ModuleType):
                self.walk(owner, depth)
        else:
            self.instance(obj, kind, depth)

    def sequence(self, tag: str, items: Any, depth: int) -> None:
        self.token(tag, struct.pack(">Q", len(items)))
        for item in items:
            self.walk(item, depth)

    def mapping(self, obj: Any, depth: int) -> None:
        """Keys in a stable order: by their own digests (insertion order is not part of what a value is)."""
        self.token("dict", struct.pack(">Q", len(obj)))
        for key_digest, value in sorted(((self.sub_digest(k, depth), v) for k, v in obj.items()),
                                        key=lambda kv: kv[0]):
            self.token("key", key_digest)
            self.walk(value, depth)

    # ---- code --------------------------------------------------------------------------------------------
    def function(self, func: types.FunctionType, depth: int) -> None:
        self.text("function", f"{func.__module__}.{func.__qualname__}" if self.code else "")
        if self.code:
            self.code_of(func.__code__, depth, docstring=func.__doc__)
            if is_user_module(func.__module__):
                self.globals_of(func, depth)
        self.walk(func.__defaults__, depth)
        self.walk(func.__kwdefaults__, depth)
        cells = func.__closure__ or ()
        values = []
        for cell in cells:
            try:
                values.append(cell.cell_contents)
            except ValueError:  # an empty cell (a name assigned later)
                values.append(None)
        self.sequence("closure", values, depth)

    def code_of(self, code: types.CodeType, depth: int, docstring: str | None = None) -> None:
        consts = list(code.co_consts)
        if docstring is not None and consts and consts[0] == docstring:
            consts[0] = None  # a docstring is documentation, not behaviour
        self.text("code", sys.implementation.cache_tag or "")
        self.token("bytecode", code.co_code)
        self.token("exceptions", getattr(code, "co_exceptiontable", b""))
        self.text("layout", repr((code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags,
                                  code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)))
        self.token("consts", struct.pack(">Q", len(consts)))
        for const in consts:
            if isinstance(const, types.CodeType):
                self.code_of(const, depth)
            else:
                self.walk(const, depth)

    def globals_of(self, func: types.FunctionType, depth: int) -> None:
        """The globals the user's function names (and its nested functions name), in name order."""
        names: set[str] = set()
        stack = [func.__code__]
        while stack:
            code = stack.pop()
            names.update(code.co_names)
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        scope = func.__globals__
        for name in sorted(names):
            if name in scope and not name.startswith("__"):
                value = scope[name]
                self.text("global", name)
                if isinstance(value, _STATE_TYPES):
                    self.identity(type(value))
                else:
                    self.walk(value, depth)

    def klass(self, cls: type, depth: int) -> None:
        """A class by its name; one of the user's own code also by its methods and plain attributes."""
        self.identity(cls)
        if not is_user_module(cls.__module__):
            return
        for base in cls.__bases__:
            if base is not object:
                self.walk(base, depth)
        for name in sorted(vars(cls)):
            if name in _SKIPPED_CLASS_ATTRS:
                continue
            value = vars(cls)[name]
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                value = (value.fget, value.fset, value.fdel)
            if isinstance(value, (types.FunctionType, tuple, type, *_PRIMITIVES)):
                self.text("attr", name)
                self.walk(value, depth)

    def identity(self, cls: type) -> None:
        self.text("class", f"{cls.__module__}.{cls.__qualname__}")

    # ---- objects -----------------------------------------------------------------------------------------
    def instance(self, obj: Any, kind: type, depth: int) -> None:
        own: Callable[[], Any] | None = getattr(obj, "cache_identity", None)
        if callable(own):
            identity = own()
            if isinstance(identity, dict):
                self.identity(kind)
            self.walk(identity, depth)  # anything else stands for the object (a wrapper: the step it wraps)
            return
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(obj, (numpy.ndarray, numpy.generic)):
            self.array(obj, numpy, depth)
            return
        if kind.__name__ in _SECRET_TYPES:
            self.identity(kind)  # a secret's value never counts
            return
        if isinstance(obj, enum.Enum):
            self.identity(kind)
            self.text("enum", obj.name)
            return
        if isinstance(obj, PurePath) or kind.__module__ in ("datetime", "decimal", "fractions", "uuid"):
            self.identity(kind)
            self.text("value", str(obj))
            return
        if _lc_serializable(obj):
            self.identity(kind)
            self.opaque += 1  # what LangChain does not serialise (a rate limiter's clock) counts by its type
            try:
                self.walk(obj.to_json(), depth)
            finally:
                self.opaque -= 1
            return
        if hasattr(kind, "model_fields") and hasattr(obj, "__pydantic_fields_set__"):
            self.identity(kind)
            fields = kind.model_fields
            self.mapping({name: getattr(obj, name, None) for name, info in fields.items()
                          if not getattr(info, "exclude", False)}, depth)
            return
        if dataclasses.is_dataclass(obj):
            self.identity(kind)
            self.mapping({f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)
                          if f.compare and f.name != "name"}, depth)
            return
        if kind.__module__ == "re" and hasattr(obj, "pattern"):
            self.identity(kind)
            self.walk((obj.pattern, obj.flags), depth)
            return
        self.walk(kind, depth)  # the class: its code, when it is the user's
        if is_user_module(kind.__module__):
            state = dict(getattr(obj, "__dict__", {}))
            for slot in _slots(kind):
                if hasattr(obj, slot):
                    state[slot] = getattr(obj, slot)
            self.mapping(state, depth)
        elif not self.opaque:
            self.reduced(obj, depth)

    def reduced(self, obj: Any, depth: int) -> None:
        """An object of a library class by what pickle would rebuild it from (``operator.itemgetter("a")``
        by ``"a"``, ``str.upper`` by its name, a numpy ufunc by its name, a plain object by its ``__dict__``);
        one that cannot be reduced (a lock, a socket) counts by its type alone."""
        try:
            reducer = copyreg.dispatch_table.get(type(obj))  # as pickle does (numpy registers its ufuncs)
            reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        except Exception:
            return
        if isinstance(reduced, str):
            self.text("global", reduced)
            return
        if not isinstance(reduced, tuple) or len(reduced) < 2:
            return
        parts = list(reduced[:3])
        for items in reduced[3:5]:
            parts.append(None if items is None else list(items))
        self.sequence("reduced", parts, depth)

    def array(self, obj: Any, numpy: Any, depth: int) -> None:
        self.text("array", f"{obj.dtype.str}{getattr(obj, 'shape', ())}")
        if obj.dtype == object:
            self.walk(obj.tolist(), depth)
        else:
            self.token("data", numpy.ascontiguousarray(obj).tobytes())


def _slots(kind: type) -> list[str]:
    names: list[str] = []
    for klass in kind.__mro__:
        slots = vars(klass).get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return [n for n in names if n not in ("__dict__", "__weakref__")]


def _lc_serializable(obj: Any) -> bool:
    """A LangChain object that serialises its constructor parameters (``to_json``), secrets as markers."""
    check = getattr(type(obj), "is_lc_serializable", None)
    if check is None or not callable(getattr(obj, "to_json", None)):
        return False
    try:
        return bool(check())
    except Exception:
        return False
