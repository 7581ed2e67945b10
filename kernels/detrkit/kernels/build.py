"""Just-in-time build and load of detrkit's kernels.

Independent libraries, built lazily on first use with torch.utils.cpp_extension (ninja) and cached
under a folder keyed by torch / CUDA / Python versions and a hash of the sources and flags, so a later
process only loads the shared object:

- ``cpu``:  kernels/csrc/msda_cpu.cpp, registers ``torch.ops.detrkit_msda_cpu.{forward,backward}``
- ``cuda``: kernels/csrc/msda_cuda.cu, registers ``torch.ops.detrkit_msda_cuda.{forward,backward}``
- ``panoptic_cpu``: kernels/csrc/panoptic_merge_cpu.cpp, registers
  ``torch.ops.detrkit_panoptic_cpu.{merge,upsample_bilinear}`` (panoptic post-processing, see panoptic_merge.py)

The CUDA build works without a GPU: the loader resolves the real toolkit behind an ``nvcc`` wrapper
script, picks an architecture list and adds the headers of the pip ``nvidia`` wheels when the toolkit
lacks some (docs/kernels.md).

Environment: DETRKIT_CACHE (cache folder; else $TORCH_EXTENSIONS_DIR/detrkit, else
$XDG_CACHE_HOME/detrkit, i.e. ~/.cache/detrkit), CUDA_HOME / CUDA_PATH, TORCH_CUDA_ARCH_LIST (default: the
visible GPUs, else 8.0;9.0+PTX), DETRKIT_PORTABLE_BUILD=1 (no -march=native for the CPU kernel),
DETRKIT_VERBOSE_BUILD=1 (show the compiler's output).
"""
from __future__ import annotations

import glob
import hashlib
import os
import platform
import re
import shutil
import sys
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = {"cpu": ["msda_cpu.cpp"], "cuda": ["msda_cuda.cu"], "panoptic_cpu": ["panoptic_merge_cpu.cpp"]}
LIBRARY_NAMES = {"cpu": "detrkit_msda_cpu", "cuda": "detrkit_msda_cuda", "panoptic_cpu": "detrkit_panoptic_cpu"}
# The panoptic kernel must round exactly as ATen's upsampling does; it writes its fused multiply-adds itself.
EXTRA_CFLAGS = {"panoptic_cpu": ["-ffp-contract=off"]}
HEADERS = ["msda_common.h"]
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # A100, H100; the PTX lets newer GPUs JIT-compile it


@dataclass
class KernelStatus:
    backend: str
    loaded: bool = False
    error: str | None = None  # one line: why the kernel is not available
    library: str | None = None  # path of the loaded shared object


_status: dict[str, KernelStatus] = {}
_lock = threading.Lock()


def cache_root() -> Path:
    if os.environ.get("DETRKIT_CACHE"):
        return Path(os.environ["DETRKIT_CACHE"])
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "detrkit"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "detrkit"


# ----------------------------------------------------------------------------------------------- CUDA toolkit
def find_cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, else the real location of `nvcc` on PATH (following
    symlinks and `exec /path/to/nvcc` wrapper scripts), else the newest /usr/local/cuda*."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        nvcc = _resolve_nvcc(nvcc)
        if nvcc:
            return str(Path(nvcc).parent.parent)
    candidates = sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), key=_version_key, reverse=True)
    candidates += glob.glob("/usr/local/cuda/bin/nvcc")
    return str(Path(candidates[0]).parent.parent) if candidates else None


def _version_key(path: str) -> tuple[int, ...]:
    """(13, 0) for /usr/local/cuda-13.0/bin/nvcc."""
    match = re.search(r"cuda-(\d+)(?:\.(\d+))?", path)
    return tuple(int(x) for x in match.groups() if x) if match else ()


def _resolve_nvcc(path: str, depth: int = 0) -> str | None:
    path = os.path.realpath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return path  # the compiler itself
    # A wrapper script: follow the first absolute path to an nvcc it runs.
    for target in re.findall(rb"(/[^\s\"']*/nvcc)\b", head):
        target = target.decode()
        if os.path.isfile(target) and os.path.realpath(target) != path and depth < 4:
            return _resolve_nvcc(target, depth + 1)
    return None


def cuda_arch_list() -> str:
    """$TORCH_CUDA_ARCH_LIST, else the visible GPUs' capabilities, else a default for current datacenter GPUs."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    return DEFAULT_CUDA_ARCHS


def _gencode_flags(arch_list: str) -> list[str]:
    flags = []
    for arch in re.split(r"[;\s,]+", arch_list.strip()):
        if not arch:
            continue
        number = arch.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    return flags


def _pip_cuda_includes(cuda_home: str) -> list[str]:
    """Include folders of the pip nvidia CUDA wheels torch depends on, when the toolkit misses headers that
    torch's CUDA headers include (e.g. cusparse.h in a trimmed toolkit)."""
    if os.path.isfile(os.path.join(cuda_home, "include", "cusparse.h")):
        return []
    major = (torch.version.cuda or "").split(".")[0]
    found = []
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}:
        nvidia = Path(site) / "nvidia"
        if (nvidia / f"cu{major}" / "include").is_dir():  # CUDA >= 13 wheels: one folder
            found.append(str(nvidia / f"cu{major}" / "include"))
        else:  # CUDA 12 wheels: one folder per library
            found += sorted(str(p) for p in nvidia.glob("*/include") if p.is_dir())
        if found:
            break
    return found


# ----------------------------------------------------------------------------------------------- build + load
def _cpu_flags() -> tuple[list[str], str]:
    """Compiler flags and the part of the cache key they depend on. -march=native makes the head-dim loops
    use the widest vector unit; it ties the binary to this CPU, so the CPU's feature flags go into the key."""
    flags = ["-O3", "-fopenmp"]  # at::parallel_for is OpenMP code inlined from the headers
    machine_key = platform.machine()
    if platform.machine() in ("x86_64", "AMD64") and os.environ.get("DETRKIT_PORTABLE_BUILD") != "1":
        flags.append("-march=native")
        try:
            with open("/proc/cpuinfo") as f:
                cpu_flags = next((line for line in f if line.startswith("flags")), "")
        except OSError:
            cpu_flags = ""
        machine_key += hashlib.sha256(cpu_flags.encode()).hexdigest()[:8]
    return flags, machine_key


def _build_spec(backend: str) -> dict:
    spec = {"name": LIBRARY_NAMES[backend], "sources": [str(CSRC / s) for s in SOURCES[backend]]}
    if backend != "cuda":
        cflags, machine_key = _cpu_flags()
        cflags += EXTRA_CFLAGS.get(backend, [])
        spec.update(extra_cflags=cflags, extra_ldflags=["-fopenmp"], key=[machine_key, *cflags])
    else:
        if torch.version.cuda is None:
            raise RuntimeError(f"this torch {torch.__version__} is built without CUDA")
        cuda_home = find_cuda_home()
        if cuda_home is None:
            raise RuntimeError("no CUDA toolkit found (set CUDA_HOME to a folder containing bin/nvcc)")
        archs = cuda_arch_list()
        includes = _pip_cuda_includes(cuda_home)
        cuda_flags = ["-O3", *_gencode_flags(archs)]
        spec.update(extra_cflags=["-O3"], extra_cuda_cflags=cuda_flags, extra_include_paths=includes,
                    cuda_home=cuda_home, key=[cuda_home, *cuda_flags, *includes])
    return spec


def build_directory(backend: str, spec: dict | None = None) -> Path:
    spec = spec or _build_spec(backend)
    digest = hashlib.sha256()
    for path in [*spec["sources"], *(str(CSRC / h) for h in HEADERS)]:
        digest.update(Path(path).read_bytes())
    digest.update("\0".join(spec["key"]).encode())
    cuda = f"cu{torch.version.cuda}" if torch.version.cuda else "cpu"
    tag = f"torch{torch.__version__.split('+')[0]}-{cuda}-py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / f"{spec['name']}-{tag}-{digest.hexdigest()[:12]}"


def _build_and_load(backend: str) -> str:
    spec = _build_spec(backend)
    directory = build_directory(backend, spec)
    library = directory / f"{spec['name']}.so"
    if not library.is_file():  # the only slow path: compile once per source/flag/version combination
        from torch.utils import cpp_extension

        directory.mkdir(parents=True, exist_ok=True)
        verbose = os.environ.get("DETRKIT_VERBOSE_BUILD") == "1"
        kwargs = dict(
            name=spec["name"], sources=spec["sources"], extra_cflags=spec["extra_cflags"],
            extra_ldflags=spec.get("extra_ldflags"), extra_include_paths=spec.get("extra_include_paths"),
            build_directory=str(directory), is_python_module=False, verbose=verbose,
        )
        if backend == "cuda":
            kwargs["extra_cuda_cflags"] = spec["extra_cuda_cflags"]
            # cpp_extension reads its CUDA_HOME global, computed at import from a possibly wrong `nvcc`.
            saved = cpp_extension.CUDA_HOME
            cpp_extension.CUDA_HOME = spec["cuda_home"]
            try:
                cpp_extension.load(**kwargs)
            finally:
                cpp_extension.CUDA_HOME = saved
        else:
            cpp_extension.load(**kwargs)
        return str(library)  # cpp_extension.load has already loaded it
    torch.ops.load_library(str(library))
    return str(library)


def load_kernel(backend: str = "cpu") -> KernelStatus:
    """Build (first time only) and load one kernel library (`cpu`, `cuda`, `panoptic_cpu`); never raises. The returned
    status says whether it is loaded and, if not, why."""
    if backend not in SOURCES:
        raise ValueError(f"backend must be one of {sorted(SOURCES)}, got {backend!r}")
    with _lock:
        if backend not in _status:
            status = KernelStatus(backend)
            try:
                status.library = _build_and_load(backend)
                status.loaded = True
            except Exception as error:  # a failed build must never break the model: it falls back
                status.error = _one_line(error)
            _status[backend] = status
        return _status[backend]


def _one_line(error: Exception) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # ninja failures put the compiler's first error somewhere in the middle; show that line.
    detail = next((line for line in lines if "error" in line.lower() and line != lines[0]), "")
    message = f"{type(error).__name__}: {lines[0] if lines else ''}"
    if detail:
        message += f" ... {detail}"
    return message[:400]


def kernel_status() -> dict[str, KernelStatus]:
    """Status of the backends tried so far in this process (nothing is built by asking)."""
    return dict(_status)
