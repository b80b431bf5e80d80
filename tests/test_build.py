"""labkit.build: strict flags on the relay's C, a recorded build, clear load errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import labkit
from labkit.build import (
    HEADER,
    SRC_DIR,
    STRICT_CFLAGS,
    BuildError,
    build,
    read_cdef,
    variant_for,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of the Python package without built modules, to build and import into."""
    shutil.copytree(ROOT / "labkit", tmp_path / "labkit",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return tmp_path


# pip's editable install adds a meta-path finder that resolves labkit.* in the checkout
# when the scratch copy lacks a module; the scratch python must see the copy alone.
_ONLY_SCRATCH = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path"
    " if not getattr(f, '__module__', '').startswith('__editable__')]; "
)


def _python(root: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LABKIT_SANITIZE")}
    return subprocess.run([sys.executable, "-c", _ONLY_SCRATCH + code], capture_output=True,
                          text=True, cwd=root, env=clean | {"PYTHONPATH": str(root)} | env,
                          timeout=60)


def test_cdef_is_the_marked_region_of_the_header() -> None:
    """cffi reads the marked region only, with the contract's X-macro tables expanded by
    the preprocessor (cffi reads no macros) and the integer #defines kept."""
    cdef = read_cdef()
    text = HEADER.read_text()
    region = text[text.index("/* cdef-begin */"):text.index("/* cdef-end */")]
    assert "int lk_relay_run(const lk_relay_config *cfg);" in cdef
    assert "#ifndef" not in cdef and "#include" not in cdef and "cdef-" not in cdef
    assert "LK_SWITCH_TABLE" not in cdef and "LK_SW_MULTISHOT = 1u << LK_SWI_MULTISHOT" in cdef
    assert "#define LK_MAX_WORKERS 64" in cdef
    prototypes = [line for line in region.splitlines() if line.endswith(");")
                  and not line.startswith((" ", "#", "/"))]
    assert prototypes and all(line in cdef for line in prototypes)
    assert "int lk_relay_run(" not in text[text.index("/* cdef-end */"):]


def test_variants() -> None:
    release = variant_for()
    assert (release.name, release.module, release.flags) == ("release", "labkit._native",
                                                              ["-O2", "-g"])
    assert variant_for(opt="-O3").flags == ["-O3", "-g"]
    assert variant_for(debug=True).flags == ["-O0", "-g3"]
    asan = variant_for(sanitize=True)
    assert asan.module == "labkit._native_asan"
    assert asan.flags == ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    assert asan.link_flags == ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    with pytest.raises(ValueError, match="-O2 or -O3"):
        variant_for(opt="-O2; rm -rf /")


def test_build_records_strict_commands_and_installs_a_loading_module(scratch: Path) -> None:
    report = build(root=scratch)
    sources = sorted(SRC_DIR.rglob("*.c"))
    relay_cmds = [c for c in report.commands if f" -c {SRC_DIR}/" in c]
    assert len(relay_cmds) == len(sources)
    for cmd in relay_cmds:
        assert " ".join(STRICT_CFLAGS + ["-O2", "-g"]) in cmd
    assert any(c.startswith("ar rcs ") for c in report.commands)
    link = report.commands[-1]
    assert "liblabkit.a -luring -lssl -lcrypto -lsodium" in link
    assert report.path.parent == scratch / "labkit" and report.path.exists()
    assert report.seconds > 0
    recorded = json.loads((scratch / "build/native-release/build.json").read_text())
    assert recorded["commands"] == report.commands and recorded["module"] == "labkit._native"
    assert "restart the kernel" in report._repr_html_() and "restart the kernel" in str(report)
    r = _python(scratch, "from labkit.native import lib; print(lib.LK_SHM_MAGIC)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1279476564"


def test_a_warning_in_relay_code_fails_the_build(scratch: Path) -> None:
    src = scratch / "src"
    shutil.copytree(SRC_DIR, src)
    (src / "zz_warn.c").write_text("int lk_zz_warn(void) { int unused; return 0; }\n")
    with pytest.raises(BuildError) as e:
        build(root=scratch, src_dir=src)
    assert "zz_warn.c" in str(e.value) and "-Werror" in str(e.value)
    assert "unused variable" in str(e.value)


def test_missing_module_says_how_to_build(scratch: Path) -> None:
    r = _python(scratch, "import labkit.native")
    assert r.returncode != 0
    assert "labkit._native is not built or does not load" in r.stderr
    assert "make setup" in r.stderr and "labkit.build()" in r.stderr


def test_sanitize_without_preload_is_an_import_error_not_an_abort(scratch: Path) -> None:
    r = _python(scratch, "import labkit.native", LABKIT_SANITIZE="1")
    assert "ImportError: LABKIT_SANITIZE=1 needs the ASan runtime preloaded" in r.stderr


def test_labkit_build_is_callable_and_runs_as_a_module() -> None:
    assert callable(labkit.build)
    r = subprocess.run([sys.executable, "-m", "labkit.build", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--sanitize" in r.stdout
    assert r.stderr == "", "python -m labkit.build must not import itself twice"
