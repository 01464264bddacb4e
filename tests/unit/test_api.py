"""The public surface of the package: exported names, compatibility module, value types,
the layering of the modules, and the type-information marker."""
# pylint: disable=duplicate-code  # the pinned __all__ repeats the package's on purpose

from __future__ import annotations

import ast
import importlib.resources
import re
import typing
from pathlib import Path

import pytest

import conduit_flat_file_db
from conduit_flat_file_db import flat_file_db

PACKAGE_DIR = Path(conduit_flat_file_db.__file__).parent
PACKAGE = "conduit_flat_file_db"

# Lowest first: a module may import only modules strictly below it. The package facade
# (__init__) sits above the compatibility module and below the command line.
LAYERS = [
    "errors",
    "arguments",
    "fileio",
    "types",
    "naming",
    "blocks",
    "index",
    "state",
    "locking",
    "frames",
    "seekable",
    "checksums",
    "segment_files",
    "sealed_check",
    "segment",
    "recovery",
    "seal",
    "readonly",
    "verify",
    "streams",
    "reader",
    "syncer",
    "write_maps",
    "writer_recovery",
    "writer",
    "rewrite",
    "tiering",  # the object-storage tier (a package: its modules import one another)
    "store",
    "log_records",
    "bulk",
    "ingest",
    "catalog",
    "maintenance",
    "flat_file_db",
    "keyed",  # the keyed store, a layer on the engine (a package: its modules import one another)
    "__init__",
    "cli",
    "__main__",
]
OPTIONAL_MODULES = {"cli", "__main__"}


def test_all_is_pinned() -> None:
    """The package's exported names are exactly these; a change here is an API change."""
    assert sorted(conduit_flat_file_db.__all__) == [
        "BlobRecord",
        "Compaction",
        "CompressMode",
        "CorruptionError",
        "DataLocation",
        "FlatFileDb",
        "FlatFileDbError",
        "FlatFileDbLockTimeoutError",
        "FlatFileDbNotFoundError",
        "FlatFileDbReadOnlyError",
        "FlatFileDbUnsafeAccessError",
        "FormatError",
        "IndexDamagedError",
        "IndexVersionError",
        "IndexWriteError",
        "InvalidKeyError",
        "InvalidLocationError",
        "KeyMeta",
        "KeyTooLongError",
        "KeyedStats",
        "KeyedStore",
        "KeyedVerifyReport",
        "LazyOpener",
        "NonContiguousBufferError",
        "NotAnArrayError",
        "PACKED_LOCATION_BYTES",
        "Problem",
        "RecompressResult",
        "SegmentStats",
        "Slice",
        "StoreStats",
        "UnsupportedBufferError",
        "VacuumResult",
        "VerifyReport",
        "__version__",
    ]


def test_every_exported_name_exists() -> None:
    """``from conduit_flat_file_db import *`` must not fail on a stale name."""
    missing = [name for name in conduit_flat_file_db.__all__ if not hasattr(conduit_flat_file_db, name)]
    assert not missing
    assert len(set(conduit_flat_file_db.__all__)) == len(conduit_flat_file_db.__all__)


def test_compatibility_module_exposes_reference_names() -> None:
    """The README imports these four names from ``conduit_flat_file_db.flat_file_db``."""
    for name in ("FlatFileDb", "FlatFileDbUnsafeAccessError", "DataLocation", "Slice"):
        assert hasattr(flat_file_db, name), name
        assert getattr(flat_file_db, name) is getattr(conduit_flat_file_db, name), name


def test_exception_hierarchy() -> None:
    """One base class; compatibility errors keep the built-in type the original raised."""
    base = conduit_flat_file_db.FlatFileDbError
    for name in (
        "CorruptionError",
        "FlatFileDbLockTimeoutError",
        "FlatFileDbNotFoundError",
        "FlatFileDbUnsafeAccessError",
        "FormatError",
        "InvalidLocationError",
    ):
        assert issubclass(getattr(conduit_flat_file_db, name), base), name
    assert issubclass(conduit_flat_file_db.FlatFileDbNotFoundError, FileNotFoundError)
    assert issubclass(conduit_flat_file_db.InvalidLocationError, ValueError)
    assert issubclass(conduit_flat_file_db.FlatFileDbLockTimeoutError, TimeoutError)


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields") and hasattr(cls, "_make")


def test_data_location_is_a_namedtuple_with_documented_fields() -> None:
    """DataLocation(file_path: str, start_offset: int, end_offset: int)."""
    cls = conduit_flat_file_db.DataLocation
    assert _is_namedtuple(cls)
    assert cls._fields == ("file_path", "start_offset", "end_offset")
    assert typing.get_type_hints(cls) == {"file_path": str, "start_offset": int, "end_offset": int}
    location = cls("/x/data_00000000.dat", 3, 9)
    assert tuple(location) == ("/x/data_00000000.dat", 3, 9)
    assert location == ("/x/data_00000000.dat", 3, 9)


def test_slice_is_a_namedtuple_with_documented_fields() -> None:
    """Slice(start_offset: int, end_offset: int), relative to the blob."""
    cls = conduit_flat_file_db.Slice
    assert _is_namedtuple(cls)
    assert cls._fields == ("start_offset", "end_offset")
    assert typing.get_type_hints(cls) == {"start_offset": int, "end_offset": int}
    assert tuple(cls(1, 2)) == (1, 2)


# -- layering -----------------------------------------------------------------------


def _module_name(path: Path, package_dir: Path) -> str:
    """Dotted name of a module file relative to the package (``store``, ``cli.__init__``, ``__init__``)."""
    return ".".join(path.relative_to(package_dir).with_suffix("").parts)


def _imports_of(source: str, module: str, known: set[str]) -> set[str]:
    """Package modules (dotted, relative to the package) and top-level third-party names imported.

    Package modules come back as their name (``errors``); the package root as ``__init__``;
    anything else as ``ext:<top-level name>``.
    """
    package_parts = module.split(".")[:-1]  # the package a relative import starts from
    found: set[str] = set()

    def add_internal(dotted: str) -> None:
        found.add(dotted or "__init__")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add_internal(alias.name[len(PACKAGE) + 1 :])
                else:
                    found.add("ext:" + alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                name = node.module or ""
                if name != PACKAGE and not name.startswith(PACKAGE + "."):
                    found.add("ext:" + name.split(".")[0])
                    continue
                base = name[len(PACKAGE) + 1 :]
            else:
                up = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            if node.module is None or base == "":
                # ``from . import x``: x is a submodule when one exists, else a name of __init__.
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    add_internal(sub if sub in known else base)
            else:
                add_internal(base)
    return found


def _layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def _layering_violations(sources: dict[str, str]) -> list[str]:
    known = set(sources)
    violations = []
    for module, source in sorted(sources.items()):
        layer = _layer_of(module)
        for imported in sorted(_imports_of(source, module, known)):
            if imported.startswith("ext:"):
                continue
            target = _layer_of(imported)
            if layer is None or target is None or imported.split(".")[0] == module.split(".")[0]:
                continue
            if target >= layer:
                violations.append(f"{module} imports {imported}, which is not below it")
    return violations


def _package_sources() -> dict[str, str]:
    return {_module_name(p, PACKAGE_DIR): p.read_text(encoding="utf-8") for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def test_layer_checker_catches_an_upward_import() -> None:
    """The checker itself: an upward import, relative or absolute, is reported."""
    sources = {
        "__init__": "from .store import FlatFileDb\n",
        "errors": "import os\n",
        "types": "from .errors import FormatError\n",
        "index": "from conduit_flat_file_db.store import FlatFileDb\n",
        "store": "from . import types, errors\nfrom .index import x\n",
        "naming": "from . import __version__\n",
        "cli.__init__": "from .. import __version__\nfrom .main import run\n",
        "cli.main": "from ..store import FlatFileDb\nfrom ..cli import x\nfrom ..__main__ import y\n",
        "__main__": "from .cli import main\n",
    }
    assert _layering_violations(sources) == [
        "cli.main imports __main__, which is not below it",
        "index imports store, which is not below it",
        "naming imports __init__, which is not below it",
    ]


def test_every_listed_module_is_known() -> None:
    """The layer list names every core module that exists (cli and __main__ may be absent)."""
    present = {m.split(".")[0] for m in _package_sources()}
    for module in LAYERS:
        assert module in present or module in OPTIONAL_MODULES, module


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in LAYERS, or the layering test would not see it."""
    present = {m.split(".")[0] for m in _package_sources()}
    assert sorted(present - set(LAYERS)) == []


def test_no_module_imports_a_module_above_it() -> None:
    """Every import points down LAYERS (h11 keeps such a one-way graph)."""
    sources = _package_sources()
    # The parser is not vacuous: it sees the store's real imports.
    assert {"errors", "locking", "writer"} <= _imports_of(sources["store"], "store", set(sources))
    assert {"segment_files", "verify", "log_records"} <= _imports_of(sources["catalog"], "catalog", set(sources))
    assert not _layering_violations(sources)


def test_locking_is_the_only_importer_of_fasteners() -> None:
    """fasteners' process-wide lock semantics are confined to one module."""
    sources = _package_sources()
    importers = sorted(m for m, src in sources.items() if "ext:fasteners" in _imports_of(src, m, set(sources)))
    assert importers == ["locking"]


def test_py_typed_ships() -> None:
    """The PEP 561 marker is in the package and declared as package data."""
    marker = importlib.resources.files(PACKAGE) / "py.typed"
    assert marker.is_file()
    pyproject = PACKAGE_DIR.parent / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not running from a source checkout")
    text = pyproject.read_text(encoding="utf-8")
    section = text.split("[tool.setuptools.package-data]", 1)
    assert len(section) == 2, "pyproject.toml has no [tool.setuptools.package-data]"
    body = section[1].split("\n[", 1)[0]
    assert PACKAGE in body and "py.typed" in body


# Modules without a tests/unit/test_<module>.py of their own, and where their behaviour is tested.
# Most are parts of a protocol that only makes sense end to end (recovery is tested by killing
# writers, sealing by forging power losses); a new module goes here only with such a reason.
TESTED_ELSEWHERE = {
    "__init__": "tests/unit/test_api.py (the pinned public face)",
    "__main__": "tests/unit/test_cli_commands.py (python -m conduit_flat_file_db)",
    "arguments": "tests/unit/test_bad_input.py, tests/unit/test_misuse.py (every argument checked)",
    "bulk": "tests/unit/test_streams.py (get_many, iter_many, get_view), tests/property",
    "catalog": "tests/unit/test_store.py (iteration, delete_file, packed locations), tests/concurrency",
    "sealed_check": "tests/unit/test_swapped_segments.py (files of one segment moved, copied or forged over another's)",
    "checksums": "tests/unit/test_store.py and tests/concurrency/test_verify_live.py (verify)",
    "errors": "tests/unit/test_api.py (the hierarchy), tests/unit/test_bad_input.py",
    "fileio": "tests/large (reads and writes past 2 GiB and 4 GiB)",
    "frames": "tests/unit/test_seekable.py, tests/format/test_seekable_fuzz.py",
    "index": "tests/format/test_index_format.py (golden bytes, one test per corruption)",
    "naming": "tests/unit/test_misuse.py (hostile names), tests/format/test_format_doc.py",
    "recovery": "tests/crash (SIGKILL at every step, torn tails, lost indexes)",
    "rewrite": "tests/unit/test_maintenance.py, tests/crash/test_compaction_crash.py",
    "seal": "tests/crash/test_power_loss_sealed.py, tests/crash/test_forged_power_loss.py",
    "segment": "tests/unit/test_write_maps.py (room), tests/fulldisk (creation on a full disk)",
    "segment_files": "tests/unit/test_misuse.py (directories, FIFOs and symlinks as segment files)",
    "state": "tests/unit/test_readonly.py, tests/crash (the state page lost or forged)",
    "syncer": "tests/crash/test_power_loss_sealed.py (background fsync of sealed segments)",
    "types": "tests/unit/test_store.py (locations, slices), tests/format/test_format_doc.py",
    "verify": "tests/concurrency/test_verify_live.py, tests/unit/test_store.py",
    "writer": "tests/unit/test_store.py, tests/unit/test_empty_blobs.py, tests/crash, tests/fulldisk",
    "writer_recovery": "tests/crash/test_sigkill.py, tests/crash/test_forged_power_loss.py",
}


def test_every_module_has_its_unit_tests_or_says_where_it_is_tested() -> None:
    """tests/unit/test_<module>.py per module, or an entry above naming where its tests are; every
    file named there exists. The CLI package is tested by tests/unit/test_cli*.py."""
    unit = Path(__file__).parent
    modules = sorted(p.stem for p in PACKAGE_DIR.glob("*.py"))
    missing = [m for m in modules if not (unit / f"test_{m}.py").exists() and m not in TESTED_ELSEWHERE]
    assert not missing, f"modules with neither tests/unit/test_<module>.py nor a TESTED_ELSEWHERE entry: {missing}"
    stale = [m for m in TESTED_ELSEWHERE if m not in modules or (unit / f"test_{m}.py").exists()]
    assert not stale, f"TESTED_ELSEWHERE entries to remove: {stale}"
    root = unit.parent.parent
    for module, where in TESTED_ELSEWHERE.items():
        for path in re.findall(r"tests/[\w/.]+", where):
            assert (root / path.rstrip(".")).exists(), f"{module}: {path} does not exist"
    assert (unit / "test_cli.py").exists()
