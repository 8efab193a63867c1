"""Input validation shared by every node: finite numbers in range, file names, step windows.

Every node of the pack derives from :class:`PackNode`. A bad widget value is refused at
``POST /prompt`` (HTTP 400) before any node runs, the input named, in one of two ways:

- ComfyUI's own checks (type conversion, ``min``/``max``, combo options) for every input a node's
  ``validate_inputs`` does not take: each failure is reported on exactly that input. ComfyUI's range
  test passes a JSON ``NaN`` (``nan < min`` is False), so every FLOAT's ``min`` is made a
  :class:`FiniteMinimum`, below which ``NaN`` lies.
- The node's own rules (``check_inputs``: values only, no tensors), run by a ``validate_inputs``
  that names in its signature the inputs those rules read, and only those: ComfyUI attaches a
  ``validate_inputs`` failure to every input in its signature (a ``**kwargs`` signature marks every
  input of the node), and skips its own checks for them, so ``PackNode`` checks their values
  against the schema itself.

Values that arrive through links are not known at validation; ``refuse_invalid`` runs the schema
checks and the rules at execution on everything the node received.
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


class FiniteMinimum(float):
    """A FLOAT input's ``min`` that a ``NaN`` is below (a plain float compares False with NaN either
    way). ComfyUI's range test ``value < min`` then refuses a JSON ``NaN`` on exactly that input, as
    any value out of range ("Value nan smaller than min of 0.0"). Python asks the right operand first
    when its type derives from the left one's, so this ``__gt__`` answers ``nan < minimum``. It is
    still a float: /object_info and the frontend see the plain number."""

    def __gt__(self, other):
        if isinstance(other, float) and math.isnan(other):
            return True
        return float.__gt__(self, other)


def with_finite_minimums(schema: io.Schema) -> io.Schema:
    """``schema`` with every FLOAT input's ``min`` a :class:`FiniteMinimum`."""
    for entry in schema.inputs:
        if isinstance(entry, io.Float.Input) and entry.min is not None and not isinstance(entry.min, FiniteMinimum):
            entry.min = FiniteMinimum(entry.min)
    return schema


INPUT_TYPES_OF = {io.Int.Input: int, io.Float.Input: (int, float), io.String.Input: str, io.Boolean.Input: bool}


def type_problem(entry, value: Any) -> Optional[str]:
    """Why ``value`` is not of the widget type of ``entry`` (an INT that is text, ...), or None."""
    expected = next((types for kind, types in INPUT_TYPES_OF.items() if isinstance(entry, kind)), None)
    if expected is None or value is None:
        return None
    if isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool):
        return None
    kind = {int: "a whole number", str: "text", bool: "true or false"}.get(expected, "a number")
    return f"{entry.id}: {value!r} is not {kind}"


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
        problem = type_problem(entry, value)
        if problem:
            return problem
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


def file_stem(name: str, input_name: str, folders: str, suffix: str = ".safetensors") -> str:
    """The file stem for ``name``, or InputError naming ``input_name``: a plain file name that
    ``embedding:NAME`` can use and every common file system can store. ``folders`` says where the
    node keeps such files (for the message: the node picks the folder, the name cannot)."""
    stem = name.strip()
    if stem.lower().endswith(suffix):
        stem = stem[: -len(suffix)]
    if not stem:
        raise InputError(f"{input_name}: give a name (a plain file name such as 'to_winter')")
    if "/" in stem or "\\" in stem or os.sep in stem or (os.altsep and os.altsep in stem):
        raise InputError(f"{input_name}: {name!r} contains a path separator; give a plain file name such as "
                         f"'to_winter', without a folder: the files are kept in {folders}")
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
    checked when ComfyUI validates a prompt and again at execution (see the module docstring).

    A node with rules (``check_inputs``) defines ``validate_inputs`` with the inputs they read as
    keyword arguments, and returns ``cls.validation_result(locals())``. A node without rules defines
    none: ComfyUI checks all its widget values itself."""

    def __init_subclass__(cls, **kwargs):
        """Each node's ``define_schema`` gives FLOAT minimums a NaN lies below (``with_finite_minimums``),
        so the node modules declare plain ``io.Float.Input`` ranges. ComfyUI's class clones (subclasses
        carrying the same ``define_schema``) are not wrapped twice."""
        super().__init_subclass__(**kwargs)
        define = cls.__dict__.get("define_schema")
        if define is not None and not getattr(define.__func__, "finite_minimums", False):
            def define_schema(node_cls, _define=define.__func__):
                return with_finite_minimums(_define(node_cls))

            define_schema.finite_minimums = True
            define_schema.__doc__ = define.__func__.__doc__
            cls.define_schema = classmethod(define_schema)

    @classmethod
    def check_inputs(cls, values: dict) -> None:
        """The node's own rules on its input values (raise InputError); a value that is None arrives
        through a link and is not known yet. Override in a node."""

    @classmethod
    def problem(cls, values: dict, validating: bool = False) -> Optional[str]:
        """The first problem of ``values``. ``validating``: at ``POST /prompt``, where ComfyUI has already
        reported a value it could not convert to its input's type (on that input): such a value is
        left out (as if linked), so no rule compares it and nothing is reported twice."""
        schema = cls.define_schema()
        if validating:
            entries = {entry.id: entry for entry in schema.inputs}
            values = {k: None if k in entries and type_problem(entries[k], v) else v for k, v in values.items()}
        problem = schema_problem(schema, values)
        if problem:
            return problem
        try:
            cls.check_inputs(values)
        except InputError as e:
            return str(e)
        return None

    @classmethod
    def validation_result(cls, values: dict) -> bool | str:
        """What a node's ``validate_inputs`` returns for the values it received (``locals()``)."""
        problem = cls.problem({k: v for k, v in values.items() if k != "cls"}, validating=True)
        return True if problem is None else problem

    @classmethod
    def refuse_invalid(cls, values: dict) -> None:
        """At the start of ``execute`` (``cls.refuse_invalid(locals())``): the same checks on every
        value the node received, linked ones included."""
        problem = cls.problem({k: v for k, v in values.items() if k != "cls"})
        if problem:
            raise InputError(problem)
