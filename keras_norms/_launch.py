"""The one launcher of keras_norms' child processes.

`run_module(module, args)` runs a Python module as a program in a fresh
interpreter (`sys.executable`) and returns its standard output. It waits
at most `timeout` seconds, captures the child's standard error, and
raises a `ChildProcessFailed` (a `RuntimeError`) saying what happened when
the child exits with a nonzero status, is killed by a signal (named:
"killed by signal 11 (SIGSEGV)") or runs past its timeout (then it and
any process it started are stopped), with the end of its standard error.

**Runtime programs never run `keras_norms/__init__.py`.** A runtime
program (`keras_norms._runtimes.onnx_runtime`, ...) must import its
runtime and NumPy alone, but `python -m keras_norms._runtimes.x` would
first execute `keras_norms/__init__.py`, which imports Keras and a
backend. This module is the one place that solves it: the child starts
with a short bootstrap (`_BOOTSTRAP`, run with `-c`) that registers a
bare `keras_norms` package (a module whose `__path__` is this package's
directory, its `__init__` not executed), so `keras_norms._runtimes.*`
and `keras_norms._launch` import on their own, then runs the module with
`runpy.run_module(..., run_name="__main__")`. With `bare=False` the
bootstrap executes `keras_norms/__init__.py` as an ordinary import
(programs that need Keras, e.g. the SavedModel export under TensorFlow
from a torch process). Either way the child imports this very copy of
keras_norms, whatever its `sys.path` holds.

This module imports the standard library only.
"""

import os
import signal
import subprocess
import sys

__all__ = ["DEFAULT_TIMEOUT", "ChildProcessFailed", "run_module"]

# Seconds a child may run before it is stopped.
DEFAULT_TIMEOUT = 900
# Characters of the child's standard error an error message quotes.
_STDERR_TAIL = 3000
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# argv: package directory, "bare" or "full", module, the module's args.
_BOOTSTRAP = """\
import importlib.util, os, runpy, sys
directory, mode, module = sys.argv[1:4]
spec = importlib.util.spec_from_file_location(
    "keras_norms",
    os.path.join(directory, "__init__.py"),
    submodule_search_locations=[directory],
)
package = importlib.util.module_from_spec(spec)
sys.modules["keras_norms"] = package
if mode == "full":
    spec.loader.exec_module(package)
sys.argv = [module] + sys.argv[4:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


class ChildProcessFailed(RuntimeError):
    """A child process that failed: exited nonzero, killed, or timed out.

    Attributes:
        returncode: The child's exit status (negative: the signal that
            killed it), or `None` when it was stopped at its timeout.
        stderr: Its standard error, as captured.
    """

    def __init__(self, message, returncode, stderr):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def run_module(
    module,
    args=(),
    *,
    bare=True,
    env=None,
    timeout=DEFAULT_TIMEOUT,
    what=None,
    capture_stdout=True,
    cwd=None,
):
    """Run `module` as a program in a fresh Python process.

    Args:
        module: The module's dotted name (`"keras_norms._runtimes.
            onnx_runtime"`), found as `python -m` would find it (a module
            outside keras_norms needs its directory on `PYTHONPATH`).
        args: The program's arguments (each converted with `str`).
        bare: `True`: `keras_norms/__init__.py` is not executed (runtime
            programs; see the module docstring). `False`: `keras_norms`
            is imported as usual when the program imports it.
        env: Environment variables to set in the child, over this
            process's environment (e.g. `{"KERAS_BACKEND": "tensorflow"}`).
            `TF_CPP_MIN_LOG_LEVEL` defaults to `"2"`.
        timeout: Seconds the child may run (a positive number).
        what: What the program does, for error messages
            (`"The onnxruntime check"`); defaults to the module's name.
        capture_stdout: Return the child's standard output; `False`
            leaves it on this process's standard output.
        cwd: The child's working directory (default: this process's).

    Returns:
        The child's standard output (a string), or `None` with
        `capture_stdout=False`.

    Raises:
        ValueError: If `timeout` is not a positive number.
        ChildProcessFailed: A `RuntimeError`, if the child exits with a
            nonzero status, is killed by a signal or runs past `timeout`;
            the message says which, and ends with its standard error.

    Example:

    ```python
    out = run_module("keras_norms._runtimes.onnx_runtime", [path, io])
    ```
    """
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not timeout > 0
    ):
        raise ValueError(
            "Argument `timeout` must be a positive number of seconds. "
            f"Received: timeout={timeout!r}"
        )
    what = what or f"The program {module}"
    environment = dict(os.environ)
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    environment.update(env or {})
    command = [
        sys.executable,
        "-c",
        _BOOTSTRAP,
        _PACKAGE_DIR,
        "bare" if bare else "full",
        module,
        *[str(a) for a in args],
    ]
    # Its own process group (POSIX), so a timeout stops the programs it
    # started too (and their pipes close).
    posix = os.name == "posix"
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE if capture_stdout else None,
        stderr=subprocess.PIPE,
        env=environment,
        cwd=cwd,
        encoding="utf-8",
        errors="replace",
        start_new_session=posix,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process, posix)
        stdout, stderr = process.communicate()
        raise ChildProcessFailed(
            f"{what} did not finish within {timeout:g} s: the child "
            f"process was stopped.{_tail(stderr)}",
            None,
            stderr,
        ) from None
    except BaseException:  # e.g. KeyboardInterrupt: leave no child behind
        _stop(process, posix)
        process.wait()
        raise
    code = process.returncode
    if code < 0:
        try:
            name = f" ({signal.Signals(-code).name})"
        except ValueError:
            name = ""
        raise ChildProcessFailed(
            f"{what} failed: the child process was killed by signal "
            f"{-code}{name}.{_tail(stderr)}",
            code,
            stderr,
        )
    if code != 0:
        raise ChildProcessFailed(
            f"{what} failed: the child process exited with status "
            f"{code}.{_tail(stderr)}",
            code,
            stderr,
        )
    return stdout


def _stop(process, posix):
    """Kill `process` and, on POSIX, the processes it started."""
    try:
        if posix:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except ProcessLookupError:  # already gone
        pass


def _tail(stderr):
    stderr = (stderr or "").strip()
    if not stderr:
        return " It wrote nothing to standard error."
    return f" The end of its standard error:\n{stderr[-_STDERR_TAIL:]}"
