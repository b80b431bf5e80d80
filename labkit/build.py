"""Build labkit's native relay module from native/src.

Two steps, kept apart on purpose:

1. The relay's own C files are compiled by us with strict flags (-Werror) into a static
   archive under build/native-<variant>/. cffi's compiler plumbing would add flags we do
   not control and hide the commands, and the relay must stay warning-clean.
2. cffi generates the Python wrapper for the API in native/include/labkit.h; that wrapper
   is compiled with the interpreter's normal extension flags (cffi's generated code is not
   -Werror clean) and linked against the archive.

Modules: `labkit._native` (release, or debug with -O0) and `labkit._native_asan`
(AddressSanitizer + UBSan; load it with LABKIT_SANITIZE=1, see labkit.native).

This file is also executed stand-alone by cffi's setuptools hook (setup.py's
`cffi_modules`), so it imports nothing from labkit and finds the tree from its own path.
"""

import argparse
import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cffi

# abspath: under cffi's setuptools hook __file__ is relative to the project root.
ROOT = Path(os.path.abspath(__file__)).parent.parent
HEADER = ROOT / "native" / "include" / "labkit.h"
SRC_DIR = ROOT / "native" / "src"
PACKAGE_DIR = ROOT / "labkit"
BUILD_DIR = ROOT / "build"

# Frame pointers: perf and py-spy unwind the relay's stacks cheaply and completely
# (DWARF unwinding gave up inside ep_send); the cost is one register.
STRICT_CFLAGS = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-fPIC", "-pthread",
                 "-fno-omit-frame-pointer"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
LIBRARIES = ["uring", "ssl", "crypto", "sodium"]
CDEF_BEGIN = "/* cdef-begin */"
CDEF_END = "/* cdef-end */"
RESTART_NOTE = (
    "A running Python process keeps the module it already imported: restart the kernel to "
    "use this build in-process. Relay processes started from now on load the new module."
)
_OPT_RE = re.compile(r"-O[0-3sgz]|-Ofast")


class BuildError(RuntimeError):
    """A compile or link step failed; the message carries the command and compiler output."""


@dataclass(frozen=True)
class Variant:
    name: str  # build/native-<name>/
    module: str  # dotted module name
    flags: list[str]  # optimisation, debug and sanitizer flags: archive and wrapper alike
    link_flags: list[str]


def variant_for(debug: bool = False, sanitize: bool = False, opt: str = "-O2") -> Variant:
    """The build variant for the given switches (debug means -O0 -g3, whatever opt says)."""
    if not _OPT_RE.fullmatch(opt):
        raise ValueError(f"opt must be a gcc optimisation flag such as -O2 or -O3, not {opt!r}")
    if sanitize:
        flags = ["-O0", "-g3"] if debug else ["-O1", "-g"]
        return Variant(
            "asan-debug" if debug else "asan",
            "labkit._native_asan",
            flags + SANITIZE_FLAGS,
            list(SANITIZE_FLAGS),
        )
    if debug:
        return Variant("debug", "labkit._native", ["-O0", "-g3"], [])
    return Variant("release", "labkit._native", [opt, "-g"], [])


@dataclass
class BuildReport:
    variant: str
    module: str
    path: Path
    commands: list[str]
    seconds: float
    output: str

    def __str__(self) -> str:
        lines = [
            f"built {self.module} ({self.variant}) in {self.seconds:.1f} s -> {self.path}",
            *(f"  $ {c}" for c in self.commands),
        ]
        if self.output.strip():
            lines += ["compiler output:", self.output.rstrip()]
        lines.append(RESTART_NOTE)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cmds = html.escape("\n".join(self.commands))
        out = html.escape(self.output.rstrip()) or "(none)"
        return (
            f"<b>built {html.escape(self.module)}</b> ({html.escape(self.variant)}) in "
            f"{self.seconds:.1f} s &rarr; <code>{html.escape(str(self.path))}</code>"
            f"<p>{html.escape(RESTART_NOTE)}</p>"
            f"<details><summary>{len(self.commands)} commands</summary><pre>{cmds}</pre>"
            f"</details><details><summary>compiler output</summary><pre>{out}</pre></details>"
        )


_INT_DEFINE = re.compile(r"#define (LK_[A-Z0-9_]+) (-?[0-9]+[uU]?)$")


def read_cdef(header: Path = HEADER) -> str:
    """What cffi parses: the part of labkit.h between the cdef-begin and cdef-end markers,
    run through the C preprocessor first, because the contract's tables (switches,
    limits, counters) are X-macros that generate enums. cffi cannot read macros, so of
    the #defines only `#define LK_NAME <integer>` lines are kept (cffi exposes those)."""
    text = header.read_text()
    try:
        start = text.index(CDEF_BEGIN) + len(CDEF_BEGIN)
        end = text.index(CDEF_END, start)
    except ValueError:
        raise BuildError(f"{header} lacks the {CDEF_BEGIN} ... {CDEF_END} markers") from None
    # -dD keeps the #define lines in the output, -undef drops the compiler's own
    cmd = [*compiler(), "-E", "-P", "-dD", "-undef", "-x", "c", "-"]
    r = subprocess.run(cmd, input=text[start:end], capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"preprocessing the cdef region failed: {shlex.join(cmd)}\n{r.stderr}")
    lines = []
    for line in r.stdout.splitlines():
        if line.startswith("#define"):
            m = _INT_DEFINE.match(line.strip())
            if m:
                lines.append(f"#define {m.group(1)} {m.group(2).rstrip('uU')}")
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def compiler() -> list[str]:
    """The C compiler: $CC or gcc. One compiler for archive and wrapper, and the one whose
    sanitizer runtime gets preloaded, because gcc's and clang's ASan runtimes differ."""
    return shlex.split(os.environ.get("CC", "gcc"))


def sanitizer_preload() -> str:
    """LD_PRELOAD value for the sanitizer module: the compiler's libasan and libubsan.

    An ASan-instrumented extension cannot be dlopen()ed into an uninstrumented python
    unless the runtime was loaded first.
    """
    paths = []
    for lib in ("libasan.so", "libubsan.so"):
        out = subprocess.run(
            [*compiler(), f"-print-file-name={lib}"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if not os.path.isabs(out):
            raise BuildError(f"{' '.join(compiler())} has no {lib}: install gcc's sanitizers")
        paths.append(out)
    return " ".join(paths)


def _run(cmd: list[str]) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    return cmd, subprocess.run(cmd, capture_output=True, text=True)


def build_archive(variant: Variant, src_dir: Path = SRC_DIR, out_dir: Path | None = None
                  ) -> tuple[Path, list[str], str]:
    """Compile src_dir/*.c with the strict flags into out_dir/liblabkit.a.

    Returns (archive, commands, compiler output). Every object is rebuilt: the sources are
    a handful of files and stale objects after a flag change would be worse than the wait.
    """
    out_dir = out_dir or BUILD_DIR / f"native-{variant.name}"
    sources = sorted(src_dir.rglob("*.c"))
    if not sources:
        raise BuildError(f"no C sources in {src_dir}")
    obj_dir = out_dir / "obj"
    if obj_dir.exists():
        shutil.rmtree(obj_dir)  # objects of deleted sources must not reach the archive
    obj_dir.mkdir(parents=True)
    cmds = [
        [*compiler(), *STRICT_CFLAGS, *variant.flags, f"-I{HEADER.parent}", f"-I{src_dir}",
         "-c", str(src), "-o", str(obj_dir / (src.parent.name + "-" + src.stem + ".o"))]
        for src in sources
    ]
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(_run, cmds))
    output = "".join(r.stdout + r.stderr for _, r in results)
    failed = [shlex.join(c) for c, r in results if r.returncode != 0]
    if failed:
        raise BuildError("compile failed:\n  " + "\n  ".join(failed) + "\n" + output)
    archive = out_dir / "liblabkit.a"
    archive.unlink(missing_ok=True)  # `ar r` would keep members of deleted sources
    ar = [os.environ.get("AR", "ar"), "rcs", str(archive), *(c[-1] for c in cmds)]
    print(shlex.join(ar), flush=True)
    _, r = _run(ar)
    output += r.stdout + r.stderr
    if r.returncode != 0:
        raise BuildError(f"archive failed: {shlex.join(ar)}\n{output}")
    return archive, [shlex.join(c) for c in cmds] + [shlex.join(ar)], output


def make_ffi(module: str, archive: Path) -> cffi.FFI:
    """The cffi builder for `module`, linking the already-built archive."""
    ffi = cffi.FFI()
    ffi.cdef(read_cdef())
    ffi.set_source(
        module,
        '#include "labkit.h"',
        include_dirs=[str(HEADER.parent)],
        extra_objects=[str(archive)],
        libraries=LIBRARIES,
        extra_link_args=["-pthread"],
        # The same file name (EXT_SUFFIX) as build() installs, not .abi3.so: two builds
        # side by side would leave it unclear which one python imports.
        py_limited_api=False,
    )
    return ffi


def ffibuilder() -> cffi.FFI:
    """setuptools hook (setup.py cffi_modules): build the release archive, return the FFI.

    setuptools then compiles and links the wrapper itself, into labkit/_native*.so.
    """
    variant = variant_for()
    archive, _, _ = build_archive(variant)
    return make_ffi(variant.module, archive)


def _python_flags() -> tuple[list[str], list[str]]:
    """Compile and link flags the interpreter uses for extensions (what cffi would use)."""
    cv = sysconfig.get_config_var
    cflags = shlex.split(cv("CFLAGS") or "") + shlex.split(cv("CCSHARED") or "")
    includes = {sysconfig.get_paths()["include"], sysconfig.get_paths()["platinclude"]}
    cflags += [f"-I{p}" for p in sorted(includes)]
    # LDSHARED starts with the interpreter's own compiler name; we keep ours.
    ldflags = shlex.split(cv("LDSHARED") or "cc -shared")[1:]
    return cflags, ldflags


def _check_loads(variant: Variant, root: Path) -> None:
    """Import the fresh module in a child python, so a missing symbol fails the build here."""
    path = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    if variant.link_flags:
        env["LD_PRELOAD"] = sanitizer_preload()
        env["ASAN_OPTIONS"] = "detect_leaks=0"
    r = subprocess.run(
        [sys.executable, "-c", f"import {variant.module}"],
        capture_output=True, text=True, env=env, cwd=root,
    )
    if r.returncode != 0:
        raise BuildError(f"built {variant.module} but it does not load:\n{r.stderr.strip()}")


def build(debug: bool = False, sanitize: bool = False, opt: str = "-O2", *,
          src_dir: Path = SRC_DIR, root: Path = ROOT) -> BuildReport:
    """Rebuild a native module and install it into <root>/labkit/.

    sanitize=True builds labkit._native_asan (ASan + UBSan, -O1); otherwise labkit._native
    with `opt` (or -O0 -g3 when debug=True). src_dir and root exist so tests can build a
    scratch tree. The report is also written to build/native-<variant>/build.json.
    """
    t0 = time.monotonic()
    variant = variant_for(debug, sanitize, opt)
    out_dir = root / "build" / f"native-{variant.name}"
    archive, commands, output = build_archive(variant, src_dir, out_dir)

    leaf = variant.module.rpartition(".")[2]
    wrapper_c = out_dir / f"{leaf}.c"
    make_ffi(variant.module, archive).emit_c_code(str(wrapper_c))
    cflags, ldflags = _python_flags()
    wrapper_o = out_dir / f"{leaf}.o"
    tmp_so = out_dir / f"{leaf}.so"
    steps = [
        [*compiler(), *cflags, *(variant.flags if variant.link_flags else []),
         f"-I{HEADER.parent}", "-c", str(wrapper_c), "-o", str(wrapper_o)],
        [*compiler(), *ldflags, str(wrapper_o), str(archive),
         *(f"-l{lib}" for lib in LIBRARIES), *variant.link_flags, "-pthread", "-o", str(tmp_so)],
    ]
    for cmd in steps:
        print(shlex.join(cmd), flush=True)
        _, r = _run(cmd)
        output += r.stdout + r.stderr
        commands.append(shlex.join(cmd))
        if r.returncode != 0:
            raise BuildError(f"failed: {shlex.join(cmd)}\n{r.stdout}{r.stderr}")

    # Replace by rename: a process that has the old module mapped keeps a valid file.
    dest = root / "labkit" / (leaf + sysconfig.get_config_var("EXT_SUFFIX"))
    fd, staged = tempfile.mkstemp(dir=dest.parent, prefix=f".{leaf}-", suffix=".so")
    os.close(fd)
    shutil.copyfile(tmp_so, staged)
    os.chmod(staged, 0o755)
    os.replace(staged, dest)
    _check_loads(variant, root)

    report = BuildReport(variant.name, variant.module, dest, commands,
                         time.monotonic() - t0, output)
    record = asdict(report) | {"path": str(dest)}
    (out_dir / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labkit.build", description=__doc__.split("\n")[0])
    ap.add_argument("--sanitize", action="store_true", help="build labkit._native_asan")
    ap.add_argument("--debug", action="store_true", help="-O0 -g3 instead of --opt")
    ap.add_argument("--opt", default="-O2", help="optimisation flag (default -O2)")
    args = ap.parse_args(argv)
    try:
        report = build(debug=args.debug, sanitize=args.sanitize, opt=args.opt)
    except (BuildError, ValueError) as e:
        print(f"labkit build: {e}", file=sys.stderr)
        return 1
    print(f"built {report.module} ({report.variant}) in {report.seconds:.1f} s -> {report.path}")
    if report.output.strip():
        print(report.output.rstrip())
    print(RESTART_NOTE)
    return 0


class _CallableModule(types.ModuleType):
    """Lets `labkit.build(...)` call build() although labkit.build is this module.

    A package attribute named like a submodule is overwritten by the submodule whenever it
    is imported, so exporting the function from labkit/__init__.py would break as soon as
    anything ran `import labkit.build`; and importing it there would make
    `python -m labkit.build` run this file twice.
    """

    def __call__(self, debug: bool = False, sanitize: bool = False, opt: str = "-O2"
                 ) -> BuildReport:
        return build(debug=debug, sanitize=sanitize, opt=opt)


if __name__ == "__main__":
    sys.exit(main())
elif __name__ in sys.modules:  # imported as labkit.build (not run by cffi's setuptools hook)
    sys.modules[__name__].__class__ = _CallableModule
