"""Converters named on the command line, and the memory they say they need.

A converter is named ``package.module:attribute``. The attribute is used as
it is when it is a function or another callable; a class is instantiated
first, with the server's :class:`~streamer.documents.DocumentStore` as its
``documents`` argument if its constructor takes one. ``demo`` names the demo
converter.

A converter may declare what one document needs with a ``memory_required``
attribute: a number of bytes, a size such as ``"8GiB"``, or a function of the
document's size in bytes and its page count. One that declares nothing gets
the server's figure (``--memory-required``, 10 GiB unless told otherwise).
See ``docs/converters.md``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

from .demo import DemoConverter
from .documents import DocumentStore
from .errors import StreamerError
from .job import MIN_MEMORY_GB, ConversionJob
from .manager import Converter, DocumentMemory
from .memory import GIB

__all__ = [
    "DEFAULT_MEMORY_REQUIRED",
    "ConverterError",
    "MemoryFunction",
    "document_memory_for",
    "load_converter",
    "memory_declaration",
    "parse_size",
]

logger = logging.getLogger("streamer.converters")

#: What a document gets from a converter that declares nothing: the
#: original's 10 GB (8 for the model, 2 to spare).
DEFAULT_MEMORY_REQUIRED = MIN_MEMORY_GB * GIB

#: A converter's memory as a function of a document's bytes and pages.
MemoryFunction: TypeAlias = Callable[[int, int], int | float]

_SPEC = re.compile(r"(?P<module>\w+(?:\.\w+)*):(?P<attribute>\w+(?:\.\w+)*)")
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[a-z]*)")

# Every unit is binary, as the original's "10 GB" was 10 * 1024**3 bytes:
# "GB" and "GiB" are the same size here.
_UNITS = {
    "": 1,
    "b": 1,
    **{
        spelling: 1024**power
        for power, letter in enumerate("kmgtp", start=1)
        for spelling in (letter, f"{letter}b", f"{letter}ib")
    },
}


class ConverterError(StreamerError, ValueError):
    """A converter cannot be loaded, or declares its memory wrongly."""


def parse_size(value: str | int) -> int:
    """Bytes from ``"512MB"``, ``"10GB"``, ``"1.5GiB"`` or ``"1073741824"``.

    Units are binary whichever way they are spelled (``GB`` is ``GiB``) and
    case does not matter; a fraction of a unit rounds down to whole bytes.
    """
    if isinstance(value, bool):
        raise ValueError(f"a size must be a number of bytes, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value

    text = value.strip().lower()
    match = _SIZE.fullmatch(text)
    if match is None or match["unit"] not in _UNITS:
        raise ValueError(
            f"{value[:64]!r} is not a size such as '512MB', '10GB', '1.5GiB'"
            " or a number of bytes"
        )
    try:
        number = Decimal(match["number"])
    except InvalidOperation:
        raise ValueError(f"{value[:64]!r} is not a size") from None
    multiplier = _UNITS[match["unit"]]
    if multiplier == 1 and number != number.to_integral_value():
        raise ValueError(f"{value[:64]!r} is not a whole number of bytes")
    return int(number * multiplier)


# -- loading ------------------------------------------------------------------------


def load_converter(spec: str, *, documents: DocumentStore | None = None) -> Converter:
    """The converter that ``spec`` (``package.module:attribute`` or ``demo``) names.

    Raises :class:`ConverterError` with what was wrong: the spec's form, the
    module, the attribute, or what the attribute turned out to be.
    """
    if spec.strip() == "demo":
        return DemoConverter()

    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise ConverterError(
            f"converter {spec[:200]!r} is not of the form 'package.module:function'"
        )
    module_name, attribute = match["module"], match["attribute"]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A module that exists but imports a missing one is a different
        # problem from a mistyped name, and is reported as such.
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConverterError(
                f"converter {spec!r}: no module named {missing!r}"
            ) from None
        raise ConverterError(
            f"converter {spec!r}: importing {module_name!r} failed: {exc}"
        ) from exc
    except Exception as exc:
        raise ConverterError(
            f"converter {spec!r}: importing {module_name!r} failed: {exc}"
        ) from exc

    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConverterError(
                f"converter {spec!r}: {module_name!r} has no attribute {attribute!r}"
            ) from None

    if inspect.isclass(target):
        target = _instantiate(spec, target, documents)
    if not callable(target):
        raise ConverterError(
            f"converter {spec!r} is not callable: it is of type {type(target).__name__}"
        )
    memory_declaration(target)
    logger.info("loaded converter %s", spec)
    converter: Converter = target
    return converter


def _instantiate(spec: str, cls: type, documents: DocumentStore | None) -> Any:
    try:
        takes_documents = "documents" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_documents = False
    if takes_documents and documents is None:
        raise ConverterError(f"converter {spec!r} needs a document store")
    try:
        return cls(documents=documents) if takes_documents else cls()
    except Exception as exc:
        raise ConverterError(f"converter {spec!r} could not be created: {exc}") from exc


# -- memory -------------------------------------------------------------------------


def memory_declaration(converter: object) -> int | MemoryFunction | None:
    """What ``converter.memory_required`` declares, checked: bytes, a function, None.

    Raises :class:`ConverterError` for a declaration that is neither a size nor
    a function, so a wrong one stops the server at start, not a job later.
    """
    declared = getattr(converter, "memory_required", None)
    if declared is None:
        return None
    name = _name(converter)
    if isinstance(declared, str | int) and not isinstance(declared, bool):
        try:
            return parse_size(declared)
        except ValueError as exc:
            raise ConverterError(f"{name}.memory_required: {exc}") from None
    if isinstance(declared, float):
        if not math.isfinite(declared) or declared < 0:
            raise ConverterError(
                f"{name}.memory_required must be a size in bytes, not {declared}"
            )
        return int(declared)
    if callable(declared):
        function: MemoryFunction = declared
        return function
    raise ConverterError(
        f"{name}.memory_required must be bytes, a size or a function,"
        f" not {type(declared).__name__}"
    )


def document_memory_for(
    converter: object, store: DocumentStore, default_bytes: int
) -> DocumentMemory:
    """The manager's ``document_memory`` hook for ``converter`` over ``store``.

    A function declaration is called with the document's size and pages; for
    an id that is not an uploaded document, whose size nobody knows, the
    default applies.
    """
    declared = memory_declaration(converter)
    name = _name(converter)

    def document_memory(job: ConversionJob, document_id: str) -> int:
        if declared is None:
            return default_bytes
        if isinstance(declared, int):
            return declared
        document = store.get(document_id)
        if document is None:
            return default_bytes
        figure = declared(document.size_bytes, document.pages)

        # The job fails with this, so it names the converter at fault.
        if (
            isinstance(figure, bool)
            or not isinstance(figure, int | float)
            or not math.isfinite(figure)
            or figure < 0
        ):
            raise ConverterError(
                f"{name}.memory_required returned {figure!r} for {document_id},"
                " not a number of bytes"
            )
        return int(figure)

    return document_memory


def _name(converter: object) -> str:
    # Functions have a qualified name of their own; instances take their type's.
    name = getattr(converter, "__qualname__", None)
    return name if isinstance(name, str) else type(converter).__qualname__
