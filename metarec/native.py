"""Hand-written CPU kernels, compiled on first use and loaded as PyTorch operators.

Some hot loops (the learned optimizer's per-coordinate LSTM step) are far faster as one pass
over the rows in C++ than as a sequence of tensor operations. Their sources ship with the
package (``metarec/_native/*.cpp``); the first call compiles one with the system's C++ compiler
(the same one :func:`torch.compile` needs on CPU) against the installed PyTorch, into a cache
directory keyed by the source, the PyTorch version and the CPU's vector capability, and loads it
with :func:`torch.ops.load_library` (ordinary ``TORCH_LIBRARY`` operators, no pickle, no Python
extension module). Without a compiler, or when the build fails, :func:`load` returns False once
with a warning and callers keep their pure-PyTorch path (the same numbers, slower).

``METAREC_NATIVE=0`` turns the kernels off; ``METAREC_NATIVE_CACHE`` sets the cache directory
(default: ``~/.cache/metarec/native``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

_SOURCES = Path(__file__).parent / "_native"
_LOADED: dict[str, bool] = {}
_LOCK = threading.Lock()


def _flags() -> list[str]:
    capability = torch.backends.cpu.get_cpu_capability()
    # AVX2 code (ATen's 8-lane vectors) on AVX2 and AVX-512 machines; portable code elsewhere
    vec = ["-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2", "-mavx2", "-mfma"] if capability in ("AVX2", "AVX512") else []
    return ["-O3", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-w",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", *vec]


def _cache_dir() -> Path:
    return Path(os.environ.get("METAREC_NATIVE_CACHE") or Path.home() / ".cache" / "metarec" / "native")


def _build(name: str) -> Path:
    from torch.utils.cpp_extension import include_paths

    source = _SOURCES / f"{name}.cpp"
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    flags = _flags()
    key = hashlib.sha256(b"\0".join([source.read_bytes(), torch.__version__.encode(), cxx.encode(),
                                      " ".join(flags).encode(), sys.platform.encode()])).hexdigest()[:16]
    target = _cache_dir() / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lib = Path(torch.__file__).parent / "lib"
    gomp = [str(p) for p in sorted(lib.glob("libgomp*.so*"))[:1]]  # the OpenMP runtime torch itself uses
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [cxx, *flags, *(f"-I{p}" for p in include_paths()), str(source), "-o", str(out),
               f"-L{lib}", "-ltorch_cpu", "-lc10", *gomp, f"-Wl,-rpath,{lib}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {source.name} failed: {done.stderr.strip()[-600:]}")
        os.replace(out, target)  # atomic: a concurrent build of the same key writes the same file
    return target


def load(name: str = "coordinate_lstm_cpu") -> bool:
    """Compile (once, cached) and load the kernel ``name``; False (with one warning) if impossible."""
    with _LOCK:
        if name not in _LOADED:
            if os.environ.get("METAREC_NATIVE", "1") == "0":
                _LOADED[name] = False
            else:
                try:
                    torch.ops.load_library(str(_build(name)))
                    _LOADED[name] = True
                except Exception as exc:  # no compiler, missing headers, unsupported platform
                    warnings.warn(f"metarec.native: {name} is not available ({type(exc).__name__}: {str(exc)[:300]}); "
                                  "using the PyTorch implementation (same numbers, slower)", RuntimeWarning, stacklevel=2)
                    _LOADED[name] = False
        return _LOADED[name]


__all__ = ["load"]
