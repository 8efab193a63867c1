"""Input validation shared by every node: finite numbers in range, file names, step windows.

Every node of the pack derives from :class:`PackNode`. Its ``validate_inputs`` runs in ComfyUI's
prompt validation, so a bad value is refused at ``POST /prompt`` (HTTP 400, the input named) before
any node runs. ComfyUI leaves range checks to a node that validates its own inputs, so ``PackNode``
checks every widget value against the node's schema itself (finite floats: ComfyUI's min/max test
lets a JSON ``NaN`` through), then the node's own rules (``check_inputs``: no tensors, only values).
Values that arrive through links are not known at validation; ``refuse_invalid`` runs the same
checks at execution on everything the node received.
"""
from __future__ import annotations

import math
import os
from typing import Any, Optional

from comfy_api.latest import io

from .facts import InputError

WINDOWS_RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                          *(f"LPT{i}" for i in range(1, 10))}
FORBIDDEN_NAME_CHARS = set('<>:"|?*')
MAX_FILE_NAME_BYTES = 255  # ext4, NTFS (in UTF-16 units), APFS: the common limit of one path component


def number_problem(name: str, value: Any, minimum=None, maximum=None) -> Optional[str]:
    """Why ``value`` is not an acceptable number for input ``name`` (finite, within the range), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    span = f" between {minimum} and {maximum}" if minimum is not None and maximum is not None else ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: {value} is not a number; give a finite value{span}"
    if minimum is not None and value < minimum:
        return f"{name}: {value} is below the minimum {minimum}; give a value{span or f' of at least {minimum}'}"
    if maximum is not None and value > maximum:
        return f"{name}: {value} is above the maximum {maximum}; give a value{span or f' of at most {maximum}'}"
    return None


def schema_problem(schema: io.Schema, values: dict) -> Optional[str]:
    """The first widget value in ``values`` that the node's schema does not allow (None when all fit)."""
    for entry in schema.inputs:
        value = values.get(entry.id)
        if value is None:
            continue
        if isinstance(entry, (io.Float.Input, io.Int.Input)):
            problem = number_problem(entry.id, value, getattr(entry, "min", None), getattr(entry, "max", None))
        elif isinstance(entry, io.Combo.Input):
            options = list(getattr(entry, "options", None) or [])
            problem = None if not options or value in options else (
                f"{entry.id}: {value!r} is not one of {options}")
        else:
            problem = None
        if problem:
            return problem
    return None


def file_stem(name: str, input_name: str, suffix: str = ".safetensors") -> str:
    """The file stem for ``name``, or InputError naming ``input_name``: a plain file name that
    ``embedding:NAME`` can use and every common file system can store."""
    stem = name.strip()
    if stem.lower().endswith(suffix):
        stem = stem[: -len(suffix)]
    if not stem:
        raise InputError(f"{input_name}: give a name (a plain file name such as 'to_winter')")
    if "/" in stem or "\\" in stem or os.sep in stem or (os.altsep and os.altsep in stem):
        raise InputError(f"{input_name}: {name!r} contains a path separator; give a plain file name, it is saved "
                         "in the embeddings folder")
    if ".." in stem or stem.startswith("."):
        raise InputError(f"{input_name}: {name!r} may not contain '..' or start with '.'; give a plain file name")
    if any(c.isspace() for c in stem) or any(c in FORBIDDEN_NAME_CHARS for c in stem) or not stem.isprintable():
        raise InputError(f"{input_name}: {name!r} has spaces or characters that cannot be written as "
                         "'embedding:NAME' or in a file name; use letters, digits, '-' and '_'")
    if stem.split(".")[0].upper() in WINDOWS_RESERVED_NAMES:
        raise InputError(f"{input_name}: {stem!r} is a reserved device name on Windows (CON, NUL, COM1, ...); "
                         "choose another name")
    if len((stem + suffix).encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise InputError(f"{input_name}: the name is {len(stem.encode('utf-8'))} bytes long; file systems take at most "
                         f"{MAX_FILE_NAME_BYTES - len(suffix)} bytes before '{suffix}'; choose a shorter name")
    return stem


def step_window_problem(start_name: str, start: Optional[int], end_name: str, end: Optional[int]) -> Optional[str]:
    """A window of steps ``[start, end)`` that ends before it starts does nothing: say so."""
    if start is None or end is None or end >= start:
        return None
    return (f"{end_name}: {end} is before {start_name} {start}, so no step would be affected; make "
            f"{end_name} at least {start_name}")


class PackNode(io.ComfyNode):
    """Base of every node of the pack: the schema's ranges, finite numbers and the node's own rules,
    checked when ComfyUI validates a prompt and again at execution."""

    @classmethod
    def check_inputs(cls, values: dict) -> None:
        """The node's own rules on its input values (raise InputError); a value that is None arrives
        through a link and is not known yet. Override in a node."""

    @classmethod
    def problem(cls, values: dict) -> Optional[str]:
        problem = schema_problem(cls.define_schema(), values)
        if problem:
            return problem
        try:
            cls.check_inputs(values)
        except InputError as e:
            return str(e)
        return None

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        problem = cls.problem(values)
        return True if problem is None else problem

    @classmethod
    def refuse_invalid(cls, values: dict) -> None:
        """At the start of ``execute`` (``cls.refuse_invalid(locals())``): the same checks on every
        value the node received, linked ones included."""
        problem = cls.problem({k: v for k, v in values.items() if k != "cls"})
        if problem:
            raise InputError(problem)
