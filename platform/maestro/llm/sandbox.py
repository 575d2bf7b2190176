"""The sandbox for code a language model writes (MaestroMotif's skill code).

MaestroMotif has a language model write small Python functions per skill: an initiation and
a termination function (features in, a bool out) and a policy over skills (features in, a
skill name or index out). That code is untrusted data. `compile_skill_code(source,
functions)` checks it and returns a `SkillCode`; `SkillSandbox(skill_code)` runs its
functions in a worker process, one call (`call`) or one batch of calls (`call_many`) at a
time.

What the code may contain:
- At module level only function definitions, constant assignments (`NAME = literal`, where
  the literal is a bool, number, str, None or a tuple of them) and a docstring.
- No imports, class definitions, decorators, async code, `global` or `nonlocal` statements,
  `print`; and what RestrictedPython refuses: names and attributes starting with `_`, `eval`,
  `exec`, `breakpoint`, frame and generator internals, augmented assignment to items.
- Each function callers name takes one argument: the features.
Code that breaks these rules is refused with a `SkillCodeError` (a ValueError) whose message
is one line: the reason, with its line number where there is one.

What a call may do: `sandbox.call(name, features)` returns `name(features)`. `features` is a
dict of plain values (bool, int, float, str, None, and lists, tuples and dicts of them, dict
keys being str); the function gets its own copy, which it may change. The code's module is
run afresh for every call, so nothing a call leaves behind (in its features, a default
argument, anything) reaches the next one. The code sees only the builtins in
`SAFE_BUILTINS`, reads attributes only from `ALLOWED_METHODS` (a few methods of dict, str,
list and tuple), and writes items only into lists, dicts and sets. The result must be a
plain value: a bool, int, float, None, or a str of at most `MAX_RESULT_CHARS` characters.

Limits: in the worker, the address space may grow by `memory_limit_mb` (default 512 MiB)
past its size when it started, Python's recursion limit is `recursion_limit` (default 200),
and a call still running after `timeout_s` (default 0.5 s) is interrupted by a timer (the
other calls of its batch go on). Code the timer cannot stop (it catches the interruption,
or sits in one long C operation) is the caller's to stop: a call, or a batch of n calls,
that has not answered `TIMER_SLACK_S` after its `timeout_s` (n x `timeout_s`) has its worker
killed, and a fresh worker with the same code serves the next call.

Failures: a call that breaks a rule or a limit, raises, or returns anything but a plain value
raises `SkillCallFailed`, whose message is one line saying why: "timed out after 0.5 s",
"MemoryError", "RecursionError: maximum recursion depth exceeded", "ZeroDivisionError:
division by zero", "NameError: name 'open' is not defined", "AttributeError: attribute
'format' is not allowed on str", "returned a function, not a plain value". The sandbox stays
usable after any of them. Features that are not plain values (TypeError) and names of
functions the `SkillCode` does not list (ValueError) are the caller's mistakes.

Two layers: RestrictedPython keeps the code away from everything but its features and the
allowed builtins and methods; the worker process bounds what the code can still spend (time,
memory) and keeps a crash away from the caller. The memory limit reads /proc: Linux only.
"""

from __future__ import annotations

import ast
import hashlib
import multiprocessing
import operator
import resource
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import CodeType
from typing import Any

from RestrictedPython import compile_restricted
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

CALL_TIMEOUT_S = 0.5
# How long past its time limit the caller waits for a call the worker's timer should stop.
TIMER_SLACK_S = 0.5
MEMORY_LIMIT_MB = 512
RECURSION_LIMIT = 200
# Starting a worker (a Python process and a few imports) is not part of a call's time.
STARTUP_TIMEOUT_S = 60.0
MAX_SOURCE_CHARS = 100_000
MAX_RESULT_CHARS = 10_000
# Features are observation values; deeper nesting is a caller's bug (or a cycle).
MAX_FEATURE_DEPTH = 8
MAX_REASON_CHARS = 300

PLAIN_SCALARS = (bool, int, float, str, type(None))
SAFE_BUILTINS = {
    builtin.__name__: builtin
    for builtin in (
        abs,
        all,
        any,
        bool,
        dict,
        enumerate,
        float,
        int,
        len,
        list,
        max,
        min,
        range,
        round,
        set,
        sorted,
        str,
        sum,
        tuple,
        zip,
    )
}
# Attribute access on exact types only: a method not listed here is refused.
ALLOWED_METHODS = {
    dict: frozenset({"get", "keys", "values", "items"}),
    str: frozenset({"lower", "upper", "startswith", "endswith", "strip", "split"}),
    list: frozenset({"append", "count", "index"}),
    tuple: frozenset({"count", "index"}),
}
WRITABLE_TYPES = (list, dict, set)
INPLACE_OPERATORS = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "|=": operator.ior,
    "^=": operator.ixor,
    "&=": operator.iand,
    "@=": operator.imatmul,
}
# Refused anywhere in the code. RestrictedPython would let imports and classes through to
# guards that this sandbox does not give; `global` would let a call keep state.
REFUSED_NODES = {
    ast.Import: "imports are not allowed",
    ast.ImportFrom: "imports are not allowed",
    ast.ClassDef: "class definitions are not allowed",
    ast.Global: "global statements are not allowed (calls keep no state)",
    ast.Nonlocal: "nonlocal statements are not allowed",
    ast.AsyncFunctionDef: "async code is not allowed",
    ast.AsyncFor: "async code is not allowed",
    ast.AsyncWith: "async code is not allowed",
    ast.Await: "async code is not allowed",
}

READY = "ready"
ANSWERED = "answered"
FAILED = "failed"


class SkillCodeError(ValueError):
    """Skill code was refused; the message is one line with the reason."""


class SkillCallFailed(RuntimeError):
    """A call of skill code broke a rule or a limit, raised, or returned something other than
    a plain value; `reason` (the message) is one line saying which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SkillCode:
    """Checked skill code: its source, the source's SHA-256 in hex (its version: skill code
    is stored by this digest) and the functions callers may call."""

    source: str
    digest: str
    functions: tuple[str, ...]


def compile_skill_code(source: str, functions: Sequence[str]) -> SkillCode:
    """Check `source` and that it defines each of `functions` at module level with one
    argument; `SkillCodeError` if not."""
    tree, _ = restricted_compile(source)
    defined = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name in functions:
        node = defined.get(name)
        if node is None:
            raise SkillCodeError(f"function {name!r} is not defined at module level")
        if not takes_one_argument(node):
            raise SkillCodeError(
                f"Line {node.lineno}: function {name!r} must take one argument, the features"
            )
    digest = hashlib.sha256(source.encode()).hexdigest()
    return SkillCode(source=source, digest=digest, functions=tuple(functions))


def restricted_compile(source: str) -> tuple[ast.Module, CodeType]:
    """The syntax tree of `source` and its code compiled by RestrictedPython, once it passed
    this sandbox's own rules; `SkillCodeError` if refused."""
    if len(source) > MAX_SOURCE_CHARS:
        raise SkillCodeError(f"{len(source)} characters of code (at most {MAX_SOURCE_CHARS})")
    try:
        tree = ast.parse(source)
        check_structure(tree)
        code = compile_restricted(source, filename="<skill code>", mode="exec")
    except SkillCodeError:
        raise
    except SyntaxError as error:
        if isinstance(error.args[0], tuple):  # RestrictedPython's refusals, "Line N: ..."
            raise SkillCodeError("; ".join(error.args[0])) from None
        raise SkillCodeError(f"Line {error.lineno}: syntax error: {error.msg}") from None
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, absurd nesting
        raise SkillCodeError(f"cannot be compiled: {type(error).__name__}") from None
    return tree, code


def check_structure(tree: ast.Module) -> None:
    """`SkillCodeError` if `tree` has a refused construct or a module-level statement that is
    not a function definition, a constant assignment or a docstring."""
    for node in ast.walk(tree):
        reason = REFUSED_NODES.get(type(node))
        if reason is None and isinstance(node, ast.Name) and node.id == "print":
            reason = "print is not available (skill code has no output)"
        if reason is None and isinstance(node, ast.FunctionDef) and node.decorator_list:
            reason = "decorators are not allowed"
        if reason is not None:
            raise SkillCodeError(f"Line {node.lineno}: {reason}")
    for node in tree.body:
        if not allowed_at_module_level(node):
            raise SkillCodeError(
                f"Line {node.lineno}: only function definitions and constant assignments "
                "may be at module level"
            )


def allowed_at_module_level(node: ast.stmt) -> bool:
    if isinstance(node, ast.FunctionDef):
        return True
    if isinstance(node, ast.Expr):  # a docstring
        return isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
        try:
            return is_constant(ast.literal_eval(node.value))
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return False
    return False


def is_constant(value: Any) -> bool:
    """Whether `value` is an immutable plain value: a scalar or a tuple of constants."""
    if type(value) is tuple:
        return all(is_constant(item) for item in value)
    return type(value) in PLAIN_SCALARS


def takes_one_argument(node: ast.FunctionDef) -> bool:
    arguments = node.args
    return (
        len(arguments.posonlyargs) + len(arguments.args) == 1
        and arguments.vararg is None
        and not arguments.kwonlyargs
        and arguments.kwarg is None
    )


def check_plain(value: Any, where: str, depth: int = 0) -> None:
    """TypeError if `value` (named `where` in the message) is not a plain value: a scalar, or
    a list, tuple or str-keyed dict of plain values nested at most MAX_FEATURE_DEPTH deep."""
    if type(value) in PLAIN_SCALARS:
        return
    if depth >= MAX_FEATURE_DEPTH:
        raise TypeError(f"{where} is nested deeper than {MAX_FEATURE_DEPTH} levels")
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]", depth + 1)
    elif type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"{where} has a key {key!r} that is not a str")
            check_plain(item, f"{where}[{key!r}]", depth + 1)
    else:
        raise TypeError(f"{where} is of type {type(value).__name__}, not a plain value")


def plain_copy(features: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `features` to send, TypeError if it holds anything but plain values."""
    features = dict(features)
    check_plain(features, "features")
    return features


class SkillSandbox:
    """Calls the functions of one `SkillCode` (from `compile_skill_code`) in a worker
    process, under the limits in the module docstring. One call at a time: not thread-safe.
    A context manager; `close()` stops the worker."""

    def __init__(
        self,
        skill_code: SkillCode,
        *,
        timeout_s: float = CALL_TIMEOUT_S,
        memory_limit_mb: int = MEMORY_LIMIT_MB,
        recursion_limit: int = RECURSION_LIMIT,
    ):
        self.skill_code = skill_code
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.recursion_limit = recursion_limit
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._ready = False
        # Started now, so that it boots while the caller gets its first features ready.
        self._start_worker()

    def __enter__(self) -> SkillSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, function: str, features: Mapping[str, Any]) -> Any:
        """`function(features)`: its plain result, or `SkillCallFailed` with the reason."""
        function, features = self._checked_function(function), plain_copy(features)
        self._wait_until_ready()
        try:
            self._connection.send((function, features))
            if not self._connection.poll(self.timeout_s + TIMER_SLACK_S):
                self._restart_worker()
                raise SkillCallFailed(f"timed out after {self.timeout_s:g} s")
            status, value = self._connection.recv()
        except (EOFError, OSError):  # the worker is gone: a crash in C code, or killed
            exit_code = self._stop_worker()
            self._start_worker()
            raise SkillCallFailed(f"the worker died (exit code {exit_code})") from None
        if status == FAILED:
            raise SkillCallFailed(value)
        return value

    def call_many(self, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        """Each `function(features)` of `calls` in one round trip to the worker (a round
        trip costs more than a call of short code): a list with, per call, its plain
        result or the `SkillCallFailed` it failed with. When the worker does not answer in
        time (module docstring), it is replaced and each call is run again on its own
        (`call`), so the failure is pinned on the call that took the time."""
        # Calls usually share their features: each distinct dict is checked and copied once.
        copies: dict[int, dict[str, Any]] = {}
        checked = []
        for function, features in calls:
            if id(features) not in copies:
                copies[id(features)] = plain_copy(features)
            checked.append((self._checked_function(function), copies[id(features)]))
        self._wait_until_ready()
        try:
            self._connection.send(checked)
            if not self._connection.poll(self.timeout_s * len(checked) + TIMER_SLACK_S):
                self._restart_worker()
                return [self._outcome(function, features) for function, features in checked]
            answers = self._connection.recv()
        except (EOFError, OSError):
            exit_code = self._stop_worker()
            self._start_worker()
            return [SkillCallFailed(f"the worker died (exit code {exit_code})")] * len(checked)
        return [SkillCallFailed(value) if status == FAILED else value for status, value in answers]

    def _checked_function(self, function: str) -> str:
        if function not in self.skill_code.functions:
            raise ValueError(f"{function!r} is not one of {self.skill_code.functions}")
        return function

    def _outcome(self, function: str, features: dict[str, Any]) -> Any:
        try:
            return self.call(function, features)
        except SkillCallFailed as failure:
            return failure

    def close(self) -> None:
        """Stop the worker; calling again does nothing."""
        self._stop_worker()

    def _start_worker(self) -> None:
        parent_end, worker_end = multiprocessing.Pipe()
        # This file run as a script: the worker imports nothing of the caller's program.
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(worker_end.fileno())],
            stdin=subprocess.DEVNULL,
            pass_fds=[worker_end.fileno()],
        )
        worker_end.close()  # so that a dead worker reads as EOF here
        self._connection = parent_end
        self._connection.send(
            (self.skill_code.source, self.memory_limit_mb, self.recursion_limit, self.timeout_s)
        )
        self._ready = False

    def _wait_until_ready(self) -> None:
        if self._process is None:
            self._start_worker()
        if self._ready:
            return
        try:
            self._ready = self._connection.poll(STARTUP_TIMEOUT_S) and (
                self._connection.recv() == READY
            )
        except (EOFError, OSError):
            self._ready = False
        if not self._ready:
            exit_code = self._stop_worker()
            raise RuntimeError(f"the sandbox worker did not start (exit code {exit_code})")

    def _restart_worker(self) -> None:
        self._stop_worker()
        self._start_worker()

    def _stop_worker(self) -> int | None:
        """Kill the worker; its exit code (None if there was none)."""
        if self._process is None:
            return None
        self._process.kill()
        exit_code = self._process.wait()
        self._connection.close()
        self._process = self._connection = None
        return exit_code


def worker_main(connection: Connection) -> None:
    """The worker process: read (source, memory_limit_mb, recursion_limit, timeout_s),
    compile the source, set the limits, say it is ready, then answer each (function,
    features) with (ANSWERED, result) or (FAILED, reason), and each list of them with a
    list of those, until the caller closes the connection."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides when the worker stops
    source, memory_limit_mb, recursion_limit, timeout_s = connection.recv()
    _, code = restricted_compile(source)
    limit_memory(memory_limit_mb)
    sys.setrecursionlimit(recursion_limit)
    signal.signal(signal.SIGALRM, interrupt_call)
    connection.send(READY)
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):  # the caller is gone
            return
        if isinstance(request, list):  # call_many
            connection.send([run_call(code, *call, timeout_s) for call in request])
        else:
            connection.send(run_call(code, *request, timeout_s))


class CallTimedOut(BaseException):
    """A call ran past its time limit (a BaseException: `except Exception` in the skill
    code does not catch it)."""


def interrupt_call(signum: int, frame: Any) -> None:
    raise CallTimedOut


def limit_memory(memory_limit_mb: int) -> None:
    """Let this process's address space grow by `memory_limit_mb` MiB past its size now."""
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * resource.getpagesize()
    limit = size + memory_limit_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_call(
    code: CodeType, function: str, features: dict[str, Any], timeout_s: float
) -> tuple[str, Any]:
    """Run the module `code` in a fresh namespace and call `function(features)` there,
    interrupted after `timeout_s`."""
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        namespace = restricted_namespace()
        exec(code, namespace)
        result = namespace[function](features)
    except CallTimedOut:
        return FAILED, f"timed out after {timeout_s:g} s"
    except Exception as error:
        return FAILED, describe(error)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if type(result) not in PLAIN_SCALARS:
        return FAILED, f"returned a {type(result).__name__}, not a plain value"
    if type(result) is str and len(result) > MAX_RESULT_CHARS:
        return FAILED, f"returned a str of {len(result)} characters (at most {MAX_RESULT_CHARS})"
    return ANSWERED, result


def restricted_namespace() -> dict[str, Any]:
    """Globals for the compiled code: the allowed builtins and the guards RestrictedPython
    routes attribute access, item access, iteration and writes through."""
    return {
        "__builtins__": SAFE_BUILTINS,
        "_getattr_": guarded_getattr,
        "_getitem_": operator.getitem,
        "_getiter_": iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": guarded_write,
        "_inplacevar_": inplace_operation,
    }


def guarded_getattr(obj: Any, name: str) -> Any:
    if name in ALLOWED_METHODS.get(type(obj), ()):
        return getattr(obj, name)
    raise AttributeError(f"attribute {name!r} is not allowed on {type(obj).__name__}")


def guarded_write(obj: Any) -> Any:
    if type(obj) in WRITABLE_TYPES:
        return obj
    raise TypeError(f"writing into a {type(obj).__name__} is not allowed")


def inplace_operation(operator_symbol: str, target: Any, value: Any) -> Any:
    return INPLACE_OPERATORS[operator_symbol](target, value)


def describe(error: Exception) -> str:
    """`error` as one line: its type and message, at most MAX_REASON_CHARS characters."""
    message = " ".join(str(error).split())
    reason = f"{type(error).__name__}: {message}" if message else type(error).__name__
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    return reason


if __name__ == "__main__":
    worker_main(Connection(int(sys.argv[1])))
