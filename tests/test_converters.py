"""Converters by name, sizes, and the memory a converter declares."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streamer import ConversionJob, JobManager
from streamer.app import Server, create_app
from streamer.converters import (
    DEFAULT_MEMORY_REQUIRED,
    ConverterError,
    document_memory_for,
    load_converter,
    memory_declaration,
    parse_size,
)
from streamer.demo import DemoConverter
from streamer.documents import Document, DocumentStore
from streamer.memory import GIB
from streamer.pdf import PdfTextConverter

MIB = 1024**2


def sample_converter(document_id: str, progress: Callable[[float], None]) -> None:
    """A converter for the loader to find."""


async def sample_async_converter(
    document_id: str, progress: Callable[[float], None]
) -> dict[str, Any]:
    return {"document_id": document_id}


class WithStore:
    """A converter class that asks for the document store."""

    memory_required = "3GiB"

    def __init__(self, documents: DocumentStore) -> None:
        self.documents = documents

    def __call__(self, document_id: str, progress: Callable[[float], None]) -> None:
        """Convert nothing."""


class Broken:
    """A converter class whose constructor fails."""

    def __init__(self) -> None:
        raise RuntimeError("no model weights")


class BadMemory:
    """A converter that declares memory in a form no one can read."""

    memory_required = ["8", "GB"]

    def __call__(self, document_id: str, progress: Callable[[float], None]) -> None:
        """Convert nothing."""


NOT_CALLABLE = 42


@pytest.fixture
def store(tmp_path: Path) -> DocumentStore:
    return DocumentStore(tmp_path / "data")


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for modules written by a test."""
    directory = tmp_path / "modules"
    directory.mkdir()
    sys.path.insert(0, str(directory))
    yield directory
    sys.path.remove(str(directory))
    for name in [n for n in sys.modules if n.startswith("streamer_test_")]:
        del sys.modules[name]


def uploaded(store: DocumentStore, size: int, pages: int) -> Document:
    document = Document(
        document_id="doc-" + "ab" * 16,
        session_id="s",
        filename="a.pdf",
        size_bytes=size,
        pages=pages,
        created_at=datetime.now(UTC),
        path=store.path_for("doc-" + "ab" * 16),
    )
    store.add(document)
    return document


def job() -> ConversionJob:
    return ConversionJob(job_id="job-1", session_id="s", document_ids=["x"])


# -- sizes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1073741824", 1 << 30),
        ("0", 0),
        ("512MB", 512 * MIB),
        ("512MiB", 512 * MIB),
        ("512 mb", 512 * MIB),
        ("10GB", 10 * GIB),
        ("10G", 10 * GIB),
        ("1.5GiB", 3 * GIB // 2),
        ("0.5gb", GIB // 2),
        ("64k", 64 * 1024),
        ("2TB", 2 * 1024 * GIB),
        ("100B", 100),
        ("  8GiB ", 8 * GIB),
        ("1.1GB", int(1.1 * GIB)),
    ],
)
def test_converters_parse_size_reads_binary_units(text: str, expected: int) -> None:
    """Sizes read as binary units whatever the spelling, GB included."""
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "GB", "abc", "-1GB", "1.5.5GB", "1XB", "nan", "inf", "1e9", "1.5", "1 2GB"],
)
def test_converters_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    """Anything but a number with an optional known unit is a ValueError."""
    with pytest.raises(ValueError, match=r"size|bytes"):
        parse_size(text)


def test_converters_parse_size_takes_whole_bytes_only_as_int() -> None:
    """An int is bytes as it is; a negative one or a bool is refused."""
    assert parse_size(4096) == 4096
    for value in (-1, True):
        with pytest.raises(ValueError):
            parse_size(value)


# -- loading ------------------------------------------------------------------------


def test_converters_load_demo_by_name_or_spec() -> None:
    """'demo' and 'streamer.demo:DemoConverter' both give a demo converter."""
    assert isinstance(load_converter("demo"), DemoConverter)
    assert isinstance(load_converter("streamer.demo:DemoConverter"), DemoConverter)


def test_converters_load_function_as_it_is() -> None:
    """A function, sync or async, is the converter itself."""
    here = "tests.test_converters"
    assert load_converter(f"{here}:sample_converter") is sample_converter
    loaded = load_converter(f"{here}:sample_async_converter")
    assert loaded is sample_async_converter


def test_converters_load_class_with_documents_gets_the_store(
    store: DocumentStore,
) -> None:
    """A class whose constructor takes documents is built with the store."""
    converter = load_converter("tests.test_converters:WithStore", documents=store)
    assert isinstance(converter, WithStore)
    assert converter.documents is store


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "not of the form 'package.module:function'"),
        ("a:b:c", "not of the form"),
        ("", "not of the form"),
        (":convert", "not of the form"),
        ("module:", "not of the form"),
        ("bad module:convert", "not of the form"),
        ("streamer_no_such_module:convert", "no module named"),
        ("streamer.no_such_module:convert", "no module named"),
        ("tests.test_converters:missing", "has no attribute 'missing'"),
        ("tests.test_converters:WithStore.missing", "has no attribute"),
        ("tests.test_converters:NOT_CALLABLE", "is not callable: it is of type int"),
        ("tests.test_converters:WithStore", "needs a document store"),
        ("tests.test_converters:Broken", "could not be created: no model weights"),
        ("tests.test_converters:BadMemory", "memory_required must be bytes"),
    ],
)
def test_converters_load_refuses_with_what_was_wrong(spec: str, message: str) -> None:
    """Each way a spec can fail is a ConverterError that says which it was."""
    with pytest.raises(ConverterError, match=message.replace("(", r"\(")):
        load_converter(spec)


def test_converters_load_tells_a_broken_import_from_a_missing_module(
    module_dir: Path,
) -> None:
    """A module that imports a missing one, or raises, is reported as failing."""
    (module_dir / "streamer_test_needs.py").write_text("import streamer_test_gone\n")
    (module_dir / "streamer_test_raises.py").write_text("raise OSError('no GPU')\n")

    with pytest.raises(ConverterError, match="importing 'streamer_test_needs' failed"):
        load_converter("streamer_test_needs:convert")
    with pytest.raises(ConverterError, match="failed: no GPU"):
        load_converter("streamer_test_raises:convert")


# -- memory -------------------------------------------------------------------------


def test_converters_memory_declaration_forms() -> None:
    """Bytes, sizes and functions are declarations; nothing declared is None."""

    def by_pages(size_bytes: int, pages: int) -> int:
        return pages * MIB

    def convert(document_id: str, progress: Callable[[float], None]) -> None:
        """Convert nothing."""

    convert.memory_required = by_pages  # type: ignore[attr-defined]
    assert memory_declaration(convert) is by_pages
    convert.memory_required = 8 * GIB  # type: ignore[attr-defined]
    assert memory_declaration(convert) == 8 * GIB
    convert.memory_required = 2.5 * GIB  # type: ignore[attr-defined]
    assert memory_declaration(convert) == 5 * GIB // 2
    assert memory_declaration(WithStore) == 3 * GIB
    assert memory_declaration(sample_converter) is None


@pytest.mark.parametrize("declared", [-1, -1.0, float("nan"), "lots", True, [8]])
def test_converters_memory_declaration_refuses_nonsense(declared: object) -> None:
    """A declaration that is no size and no function fails, naming the converter."""

    def convert(document_id: str, progress: Callable[[float], None]) -> None:
        """Convert nothing."""

    convert.memory_required = declared  # type: ignore[attr-defined]
    with pytest.raises(ConverterError, match=r"convert\.memory_required"):
        memory_declaration(convert)


def test_converters_document_memory_fixed_figure(store: DocumentStore) -> None:
    """A fixed declaration is what every document reserves, uploaded or not."""
    hook = document_memory_for(WithStore, store, DEFAULT_MEMORY_REQUIRED)
    document = uploaded(store, 10 * MIB, 3)

    assert hook(job(), document.document_id) == 3 * GIB
    assert hook(job(), "plain.pdf") == 3 * GIB


def test_converters_document_memory_function_of_size_and_pages(
    store: DocumentStore,
) -> None:
    """A function gets the upload's size and pages; a plain id gets the default."""
    calls: list[tuple[int, int]] = []

    class Model:
        def memory_required(self, size_bytes: int, pages: int) -> int:
            calls.append((size_bytes, pages))
            return GIB + pages * 100 * MIB

    document = uploaded(store, 10 * MIB, 4)
    hook = document_memory_for(Model(), store, 7 * GIB)

    assert hook(job(), document.document_id) == GIB + 400 * MIB
    assert calls == [(10 * MIB, 4)]
    assert hook(job(), "plain.pdf") == 7 * GIB
    assert len(calls) == 1


def test_converters_document_memory_undeclared_gets_default(
    store: DocumentStore,
) -> None:
    """A converter that declares nothing reserves the server's figure."""
    document = uploaded(store, MIB, 1)
    hook = document_memory_for(sample_converter, store, 5 * GIB)
    assert hook(job(), document.document_id) == 5 * GIB


@pytest.mark.parametrize("figure", [-1, "8GB", None, float("inf")])
def test_converters_document_memory_bad_function_result_fails(
    store: DocumentStore, figure: object
) -> None:
    """A function that answers no number of bytes raises, naming the converter."""

    class Model:
        def memory_required(self, size_bytes: int, pages: int) -> object:
            return figure

    document = uploaded(store, MIB, 1)
    hook = document_memory_for(Model(), store, GIB)
    with pytest.raises(ConverterError, match=r"memory_required returned .* for doc-"):
        hook(job(), document.document_id)


# -- wiring into the app ------------------------------------------------------------


async def test_converters_create_app_builds_manager_with_the_figures(
    tmp_path: Path,
) -> None:
    """Without a manager, create_app wires memory, concurrency and the store."""
    app = create_app(
        converter="tests.test_converters:WithStore",
        data_dir=tmp_path / "data",
        memory_required="2GB",
        max_concurrent=2,
    )
    server: Server = app.state.streamer
    try:
        assert isinstance(server.converter, WithStore)
        assert server.converter.documents is server.documents
        assert server.documents.data_dir == tmp_path / "data"
        assert server.manager.gate._max_concurrent == 2
        assert server.manager.memory_required_gb == 3
        hook = server.manager.document_memory
        assert hook is not None and hook(job(), "plain") == 3 * GIB
        assert not (tmp_path / "data").exists()
    finally:
        await server.aclose()


async def test_converters_create_app_default_memory_for_undeclared(
    tmp_path: Path,
) -> None:
    """An undeclared converter's documents reserve memory_required, else 10 GiB."""
    given = create_app(converter=sample_converter, memory_required=3 * GIB)
    default = create_app(converter="demo", data_dir=tmp_path)
    try:
        for app, figure in ((given, 3 * GIB), (default, 10 * GIB)):
            manager = app.state.streamer.manager
            assert manager.document_memory(job(), "plain") == figure
            assert manager.memory_required_gb == figure / GIB
        assert isinstance(default.state.streamer.converter, DemoConverter)
    finally:
        await given.state.streamer.aclose()
        await default.state.streamer.aclose()


async def test_converters_create_app_defaults_to_pdf_text(tmp_path: Path) -> None:
    """With no converter anywhere, jobs convert PDFs to text over the store."""
    app = create_app(data_dir=tmp_path)
    server: Server = app.state.streamer
    try:
        assert isinstance(server.converter, PdfTextConverter)
        assert server.uploads_only
    finally:
        await server.aclose()


async def test_converters_create_app_leaves_a_given_manager_alone(
    tmp_path: Path,
) -> None:
    """A manager passed in keeps its figures; memory options for it are refused."""
    manager = JobManager(memory_required_gb=1.0)
    app = create_app(manager, converter="demo", data_dir=tmp_path)
    try:
        assert manager.document_memory is None
        assert manager.memory_required_gb == 1.0
        for options in ({"memory_required": "1GB"}, {"max_concurrent": 1}):
            with pytest.raises(TypeError, match="the manager passed in"):
                create_app(manager, **options)
    finally:
        await app.state.streamer.aclose()


def test_converters_create_app_refuses_a_bad_spec() -> None:
    """A converter spec that does not load stops create_app with the reason."""
    with pytest.raises(ConverterError, match="no module named"):
        create_app(converter="streamer_no_such_module:convert")
