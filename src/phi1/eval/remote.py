"""The program answers calls; the judge, another process, runs the tests and decides (stdlib only).

A verdict that the program's own process reports can always be forged by that
process: it can read any secret the harness puts there (frames, `gc`, its file
descriptors, `/proc/self/mem`) and write whatever the harness expects. So in a
judged run the test code never runs in the program's process:

- the *program* (prompt + completion, plus MBPP's setup code) runs in the
  confined child and then only answers requests: look up a global name, call
  an object, read an attribute, iterate, `len`, `bool`, `repr`, index;
- the *judge*, a sibling process under another uid (or non-dumpable, without
  root), runs the benchmark's trusted code: the prompt's own helpers, then the
  tests. A name the tests use that the judge does not define is looked up in
  the program; `check(candidate)` calls go through a `Remote` proxy.

Values cross as data, never as objects: None, bool, int, float, complex, str,
bytes, list, tuple, dict, set and frozenset are rebuilt in the judge from a
tagged JSON encoding (subclasses arrive as their base type, numpy scalars as
Python numbers), modules are imported by the judge itself, and anything else
stays in the program as an opaque handle that equals only itself. So a result
cannot carry code into the judge, and an object whose `__eq__` always says
True compares as what it is: not equal. The judge reports its verdict on a
pipe the program never holds; the program can make its run fail (exit, crash,
answer garbage, kill the judge without root), never pass.

Wire format: 4-byte big-endian length, then one JSON document.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import struct
import sys
from types import CodeType

MAX_MESSAGE = 64 << 20   # bytes; a larger reply is a protocol error (the judge never buffers more)
SMALL_INT = 1 << 62
STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))


# -- framing ------------------------------------------------------------------------

def send(fd: int, obj) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(fd: int):
    """One message, or raise `Gone` at EOF / a malformed or oversized frame."""
    head = _read_exact(fd, 4)
    if head is None:
        raise Gone("the program closed its channel")
    (size,) = struct.unpack(">I", head)
    if size > MAX_MESSAGE:
        raise Gone(f"the program sent a {size}-byte message (limit {MAX_MESSAGE})")
    data = _read_exact(fd, size)
    if data is None:
        raise Gone("the program closed its channel mid-message")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise Gone("the program sent a message that is not JSON") from None


class Gone(BaseException):
    """The program died, closed its channel or broke the protocol: the run fails whatever the tests do.

    A BaseException, so `except Exception` in test code does not swallow it."""


class RemoteExit(BaseException):
    """The program raised SystemExit / KeyboardInterrupt / GeneratorExit inside a call."""

    def __init__(self, type_name: str, message: str):
        super().__init__(message)
        self.remote_type = type_name


class RemoteError(Exception):
    """An exception of a type the judge does not have (e.g. one the completion defined)."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.remote_type = type_name


# -- values ---------------------------------------------------------------------------

class Handles:
    """The program-side table of objects that stay in the program."""

    def __init__(self):
        self.objects: list = []

    def add(self, obj) -> int:
        self.objects.append(obj)
        return len(self.objects) - 1

    def get(self, i):
        if not isinstance(i, int) or not 0 <= i < len(self.objects):
            raise LookupError(f"no handle {i!r}")
        return self.objects[i]


def encode(x, handles: Handles | None):
    """Plain data as tagged JSON; other objects as handles (program side) or an error (judge side)."""
    t = type(x)
    if x is None or t is bool or t is str or t is float:
        return x
    if t is int:
        return x if -SMALL_INT < x < SMALL_INT else ["i", format(x, "x")]
    if t is list:
        return ["l", *[encode(v, handles) for v in x]]
    if t is tuple:
        return ["t", *[encode(v, handles) for v in x]]
    if t is dict:
        return ["d", *[[encode(k, handles), encode(v, handles)] for k, v in x.items()]]
    if t is set or t is frozenset:
        return ["s" if t is set else "f", *[encode(v, handles) for v in x]]
    if t is bytes:
        return ["b", x.hex()]
    if t is bytearray:
        return ["ba", x.hex()]
    if t is complex:
        return ["c", x.real, x.imag]
    # Subclasses travel as their base type: the judge compares plain values only.
    for base in (bool, int, float, str, bytes, bytearray, complex, list, tuple, dict, frozenset, set):
        if isinstance(x, base):
            if base in (list, tuple, set, frozenset):
                return encode(base(base.__iter__(x)), handles)
            if base is dict:
                return encode(dict(dict.items(x)), handles)
            return encode(base(x) if base is not str else str.__str__(x), handles)
    if type(x).__module__ == "numpy" and getattr(x, "shape", None) == () and hasattr(x, "item"):
        return encode(x.item(), handles)  # numpy scalars (and 0-d arrays) are Python numbers
    if t is type(sys):
        return ["m", x.__name__]
    if t is Remote:  # judge side: an object of the program's goes back as its handle
        return ["h", x._id, x._type]
    if handles is None:
        raise TypeError(f"a {t.__name__} cannot be passed to the program; tests may pass plain values "
                        "(None, bool, int, float, complex, str, bytes, list, tuple, dict, set) and results")
    return ["h", handles.add(x), t.__name__]


def decode(x, remote):
    """Rebuild plain values; `remote(tag, payload)` turns handle and module tags into objects."""
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is not list or not x or type(x[0]) is not str:
        raise ValueError(f"not an encoded value: {str(x)[:80]}")
    tag, rest = x[0], x[1:]
    if tag == "l":
        return [decode(v, remote) for v in rest]
    if tag == "t":
        return tuple(decode(v, remote) for v in rest)
    if tag == "d":
        out = {}
        for pair in rest:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("a dict item is not a [key, value] pair")
            out[decode(pair[0], remote)] = decode(pair[1], remote)
        return out
    if tag == "s":
        return {decode(v, remote) for v in rest}
    if tag == "f":
        return frozenset(decode(v, remote) for v in rest)
    if tag == "i" and len(rest) == 1 and type(rest[0]) is str:
        return int(rest[0], 16)
    if tag == "b" and len(rest) == 1 and type(rest[0]) is str:
        return bytes.fromhex(rest[0])
    if tag == "ba" and len(rest) == 1 and type(rest[0]) is str:
        return bytearray.fromhex(rest[0])
    if tag == "c" and len(rest) == 2 and all(type(v) in (int, float) for v in rest):
        return complex(rest[0], rest[1])
    if tag in ("h", "m"):
        return remote(tag, rest)
    raise ValueError(f"unknown value tag {tag!r}")


# -- the program side -------------------------------------------------------------------

def serve(namespace: dict, rfd: int, wfd: int) -> None:  # pragma: no cover - runs in the sandboxed child
    """Answer the judge's requests until it closes the channel."""
    handles = Handles()

    def local(tag, rest):
        if tag == "h" and len(rest) >= 1:
            return handles.get(rest[0])
        raise ValueError(f"the judge cannot send {tag!r} values")

    while True:
        try:
            req = recv(rfd)
        except Gone:
            return
        try:
            op, args = req[0], req[1:]
            if op == "get":
                if args[0] not in namespace:
                    raise NameError(f"name {args[0]!r} is not defined")
                value = namespace[args[0]]
                reply = ["ok", encode(value, handles)]
            elif op == "call":
                fn = handles.get(args[0])
                pos = decode(args[1], local)
                kw = decode(args[2], local)
                result = fn(*pos, **kw)
                reply = ["ok", encode(result, handles)]
                if args[3]:  # mutable arguments: send them back so in-place changes are seen
                    reply.append(encode(pos, handles))
            else:
                obj = handles.get(args[0])
                if op == "attr":
                    value = getattr(obj, args[1])
                elif op == "iter":
                    value = list(obj)
                elif op == "len":
                    value = len(obj)
                elif op == "bool":
                    value = bool(obj)
                elif op == "repr":
                    value = repr(obj)
                elif op == "str":
                    value = str(obj)
                elif op == "getitem":
                    value = obj[decode(args[1], local)]
                elif op == "contains":
                    value = decode(args[1], local) in obj
                else:
                    raise ValueError(f"unknown request {op!r}")
                reply = ["ok", encode(value, handles)]
        except BaseException as exc:  # noqa: BLE001 - every failure is the judge's to weigh
            reply = ["err", type(exc).__name__, _safe_str(exc)]
        try:
            send(wfd, reply)
        except (OSError, ValueError, TypeError, RecursionError) as exc:
            send(wfd, ["err", type(exc).__name__, _safe_str(exc)])


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)[:2000]
    except BaseException:  # noqa: BLE001
        return "<unprintable>"


# -- the judge side ---------------------------------------------------------------------

class Link:
    """The judge's end of the channel; every request is one round trip."""

    def __init__(self, wfd: int, rfd: int):
        self.wfd, self.rfd = wfd, rfd
        self.broken: str | None = None
        self.exit: RemoteExit | None = None

    def _materialize(self, tag, rest):
        if tag == "h" and len(rest) == 2 and type(rest[0]) is int and type(rest[1]) is str:
            return Remote(self, rest[0], rest[1])
        if tag == "m" and len(rest) == 1 and type(rest[0]) is str:
            name = rest[0]
            top = name.split(".")[0]
            if top not in STDLIB and top not in sys.modules:
                raise ValueError(f"the program's module {name!r} is not one the judge imports")
            return importlib.import_module(name)
        raise ValueError(f"malformed {tag!r} value")

    def request(self, *msg, args_back: tuple | None = None):
        if self.broken:
            raise Gone(self.broken)
        try:
            send(self.wfd, list(msg))
            reply = recv(self.rfd)
            if type(reply) is not list or not reply:
                raise Gone("the program sent a malformed reply")
            if reply[0] == "err" and len(reply) == 3 and all(type(v) is str for v in reply[1:]):
                raise _rebuild(reply[1], reply[2])
            if reply[0] != "ok" or len(reply) not in (2, 3):
                raise Gone("the program sent a malformed reply")
            try:
                value = decode(reply[1], self._materialize)
                if args_back is not None and len(reply) == 3:
                    _copy_back(args_back, decode(reply[2], self._materialize))
            except (ValueError, TypeError, RecursionError, ImportError) as exc:
                raise Gone(f"the program sent a value the judge cannot rebuild ({exc})") from None
            return value
        except Gone as exc:
            self.broken = str(exc)
            raise
        except RemoteExit as exc:
            self.exit = exc
            raise
        except OSError as exc:
            self.broken = f"the channel to the program failed ({exc})"
            raise Gone(self.broken) from None

    def lookup(self, name: str):
        return self.request("get", name)


def _rebuild(type_name: str, message: str) -> BaseException:
    cls = getattr(builtins, type_name, None)
    if type_name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
        return RemoteExit(type_name, message)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(message)
            exc.remote_type = type_name
            return exc
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            pass
    return RemoteError(type_name, message)


_MUTABLE = (list, dict, set, bytearray)


def _copy_back(sent: tuple, returned) -> None:
    """Apply the program's in-place changes to the judge's own list/dict/set/bytearray arguments."""
    if type(returned) is not list or len(returned) != len(sent):
        raise ValueError("the program sent back a different number of arguments")
    for mine, theirs in zip(sent, returned):
        if type(mine) is list and type(theirs) is list or type(mine) is bytearray and type(theirs) is bytearray:
            mine[:] = theirs
        elif type(mine) is dict and type(theirs) is dict or type(mine) is set and type(theirs) is set:
            mine.clear()
            mine.update(theirs)


class Remote:
    """An object that lives in the program. It equals only itself; using it is a round trip."""

    __slots__ = ("_link", "_id", "_type")

    def __init__(self, link: Link, ident: int, type_name: str):
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_id", ident)
        object.__setattr__(self, "_type", type_name)

    def __call__(self, *args, **kwargs):
        link = self._link
        pos = encode(list(args), None)
        kw = encode(dict(kwargs), None)
        mutable = any(type(a) in _MUTABLE for a in args)
        return link.request("call", self._id, pos, kw, mutable, args_back=args if mutable else None)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._link.request("attr", self._id, name)

    def __setattr__(self, name, value):
        raise AttributeError("objects in the program are read-only from the tests")

    def __iter__(self):
        return iter(self._link.request("iter", self._id))

    def __len__(self):
        n = self._link.request("len", self._id)
        if type(n) is not int or n < 0:
            raise TypeError("len() of a program object must be a non-negative int")
        return n

    def __bool__(self):
        return self._link.request("bool", self._id) is True

    def __getitem__(self, key):
        return self._link.request("getitem", self._id, encode(key, None))

    def __contains__(self, item):
        return self._link.request("contains", self._id, encode(item, None)) is True

    def __repr__(self):
        text = self._link.request("repr", self._id)
        return text if type(text) is str else f"<{self._type} in the program>"

    def __str__(self):
        text = self._link.request("str", self._id)
        return text if type(text) is str else f"<{self._type} in the program>"

    def __eq__(self, other):
        return self is other or (type(other) is Remote and other._link is self._link and other._id == self._id)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(("phi1-remote", self._id))


class JudgeGlobals(dict):
    """The tests' globals: a name the judge does not define is the program's (a builtin stays a builtin)."""

    def __init__(self, link: Link):
        super().__init__()
        self._link = link

    def __missing__(self, name):
        if name in builtins.__dict__ or name.startswith("__"):
            raise KeyError(name)
        try:
            value = self._link.lookup(name)
        except NameError:
            raise KeyError(name) from None
        self[name] = value
        return value


def judge(setup, check, remote_names: list[str], link: Link) -> dict:  # pragma: no cover - child
    """Run the trusted test code (source or code objects) against the program; the verdict as a dict
    (never trusts the program)."""
    ns = JudgeGlobals(link)
    ns["__name__"] = "__phi1_judge__"
    ns["__builtins__"] = builtins
    try:
        if setup:
            exec(setup if type(setup) is CodeType else compile(setup, "<tests setup>", "exec"), ns)
        for name in remote_names:
            ns.pop(name, None)
        ready = recv(link.rfd)
        if ready != ["ready"]:
            # The program failed before its definitions were complete (syntax, an exception at import,
            # an exit); the kind it claims is a failure kind whatever it says.
            if type(ready) is list and len(ready) == 4 and ready[0] == "init" and all(type(v) is str for v in ready[1:]):
                status = ready[1] if ready[1] in ("syntax", "failed") else "failed"
                return {"status": status, "exc_type": ready[2], "message": ready[3][:2000]}
            raise Gone("the program did not start")
        code = check if type(check) is CodeType else compile(check, "<tests>", "exec")
    except Gone as exc:
        return {"status": "gone", "message": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - the tests' own setup failed: a harness problem
        return {"status": "harness", "exc_type": type(exc).__name__, "message": _safe_str(exc)}
    verdict = _run_check(code, ns, link)
    # Partial results the tests record (evalplus: "base" when the base tests passed), plain bools only.
    marks = dict.get(ns, "__phi1_marks__")
    if type(marks) is dict:
        verdict["marks"] = {k: v is True for k, v in marks.items() if type(k) is str}
    return verdict


def _run_check(code, ns: dict, link: Link) -> dict:  # pragma: no cover - judge process
    try:
        exec(code, ns)
    except Gone as exc:
        return {"status": "gone", "message": str(exc)}
    except BaseException as exc:  # noqa: BLE001
        kind = getattr(exc, "remote_type", None) or type(exc).__name__
        return {"status": "failed", "exc_type": kind, "message": _safe_str(exc)}
    if link.broken:
        return {"status": "gone", "message": link.broken}
    if link.exit is not None:  # the tests swallowed the program's exit: still a failure
        return {"status": "failed", "exc_type": link.exit.remote_type, "message": _safe_str(link.exit)}
    return {"status": "passed"}
