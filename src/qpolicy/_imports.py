"""Import a user's object from ``package.module:NAME`` or ``path/to/file.py:NAME`` (models, data factories)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, first_line

__all__ = ["import_reference"]


def import_reference(ref: str, what: str) -> Any:
    """The object ``NAME`` of ``module:NAME`` (importable from the current folder too) or ``file.py:NAME``.

    Raises:
        ConfigError: a malformed reference, a module that does not import (with its first error line), or no such
            object; ``what`` names the reference in the message ("model", "data").
    """
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr or not attr.isidentifier():
        raise ConfigError(f"{what} reference must look like package.module:factory or path/to/file.py:factory, "
                          f"got {ref!r}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConfigError(f"{what} file {target} not found (reference {ref!r})")
        name = f"_qpolicy_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {target} ({what} {ref!r}): not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)  # the file may import its neighbours
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the user's module may raise anything while it runs
            sys.modules.pop(name, None)
            raise ConfigError(f"cannot import {target} ({what} {ref!r}): {type(e).__name__}: {first_line(e)}") \
                from None
        finally:
            sys.path.remove(folder)
    else:
        added = "" not in sys.path and str(Path.cwd()) not in sys.path
        if added:  # `module:factory` run from the folder that holds module.py, as `python -m` would
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(target)
        except Exception as e:  # ImportError, or anything the module raises on import
            raise ConfigError(f"cannot import {target!r} for {what} {ref!r}: {type(e).__name__}: {first_line(e)} "
                              "(the module must be importable from the current folder or PYTHONPATH)") from None
        finally:
            if added:
                sys.path.remove("")
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise ConfigError(f"{target} has no callable {attr!r} ({what} {ref!r})")
    return obj
