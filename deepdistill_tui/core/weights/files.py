"""Finding model files named by a recipe, and the machine they will run on."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.events import Emit, noop
from deepdistill_tui.core.recipe import ModelRef, resolve_data_path
from deepdistill_tui.core.weights.download import cache_root, cached_file, hub_file

GGUF_MAGIC = b"GGUF"


def _package_file(spec: str) -> Path:
    package, _, rel = spec.partition("/")
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        raise DeepDistillError(f"model package {package!r} is not installed (pip install {package})")
    return Path(next(iter(found.submodule_search_locations))) / rel


def _assembled_path_if_present(spec: str) -> Path | None:
    """Where an assembling package has already written its file, without assembling it again.

    Chunked model packages write under the user cache in a folder named after the module.
    """
    module_name, _, _ = spec.partition(":")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / module_name
    return next(iter(sorted(cache.glob("*.gguf"))), None) if cache.is_dir() else None


def locate(ref: ModelRef) -> Path | None:
    """The model file if it is already on this machine, else None. Never downloads or builds."""
    source = _locate_source(ref)
    if source is None or ref.quantize is None:
        return source
    out = requantized_path(source, ref.quantize)
    return out if out.is_file() else None


def _locate_source(ref: ModelRef) -> Path | None:
    if ref.path:
        p = resolve_data_path(ref.path)
        return p if p.is_file() else None
    if ref.package_file:
        try:
            p = _package_file(ref.package_file)
        except DeepDistillError:
            return None
        return p if p.is_file() else None
    if ref.assemble:
        return _assembled_path_if_present(ref.assemble)
    assert ref.hub
    repo, _, filename = ref.hub.partition(":")
    return cached_file(repo, filename)


def fetch(ref: ModelRef, emit: Emit | None = None) -> Path:
    """The model file, assembled, downloaded or requantized if needed (a download reports its bytes
    through ``emit``). Raises with the cause when it cannot be had."""
    source = _fetch_source(ref, emit)
    return requantize(source, ref.quantize) if ref.quantize else source


def _fetch_source(ref: ModelRef, emit: Emit | None) -> Path:
    present = _locate_source(ref)
    if present is not None:
        return present
    if ref.path:
        raise DeepDistillError(f"model file {ref.path} does not exist")
    if ref.package_file:
        p = _package_file(ref.package_file)
        raise DeepDistillError(f"model package has no file {p.name} at {p}")
    if ref.assemble:
        module_name, _, func = ref.assemble.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise DeepDistillError(f"model package {module_name!r} is not installed") from exc
        return Path(getattr(module, func or "assemble")())
    assert ref.hub
    repo, _, filename = ref.hub.partition(":")
    return hub_file(repo, filename, emit or noop)


QUANT_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}  # llama.cpp's llama_ftype codes
FILE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k",
              11: "q3_k_s", 12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s",
              17: "q5_k_m", 18: "q6_k", 32: "bf16"}
"""GGUF's general.file_type codes (llama_ftype) as names."""


def gguf_file_type(path: Path) -> str:
    """The weights' format a GGUF file declares (general.file_type), e.g. q4_1 or q8_0."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).get_field("general.file_type")
    if field is None:
        return "unknown"
    code = int(field.parts[field.data[0]][0])
    return FILE_TYPES.get(code, f"type {code}")


def requantized_path(source: Path, quantize: str) -> Path:
    """Where the requantized copy of ``source`` is cached: keyed by the source's path, size and
    mtime, so that a replaced source is requantized again."""
    st = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "quantized" / f"{source.stem}-{key}.{quantize}.gguf"


def requantize(source: Path, quantize: str) -> Path:
    """``source`` as a GGUF of type ``quantize``, made once with llama.cpp's own quantizer (a few
    seconds for a small model) and written atomically."""
    import ctypes

    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    out = requantized_path(source, quantize)
    if out.is_file():
        return out
    check_gguf(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quantize]
    params.allow_requantize = True  # the source may itself be quantized (q4_1 from PyPI)
    params.nthread = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    try:
        with suppress_stdout_stderr(disable=False):  # its log of every tensor would garble the app
            rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(),
                                                ctypes.byref(params))
        if rc != 0:
            raise DeepDistillError(f"llama.cpp could not requantize {source} to {quantize} (code {rc})")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def check_gguf(path: Path) -> None:
    """Refuse files that are not GGUF before llama.cpp sees them (its errors are opaque)."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise DeepDistillError(f"cannot read model file {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise DeepDistillError(f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a model file, memoised in this process by path, size and mtime (hashing 5 GB is slow)."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    cached = _SHA_CACHE.get(key)
    if cached:
        return cached
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


_SHA_CACHE: dict[str, str] = {}


@dataclass(frozen=True)
class Hardware:
    cores: int
    ram_gb: float
    gpu: str | None
    gpu_memory_gb: float | None

    def describe(self) -> str:
        gpu = f"{self.gpu} ({self.gpu_memory_gb:.0f} GB)" if self.gpu else "no GPU"
        return f"{self.cores} cores, {self.ram_gb:.0f} GB RAM, {gpu}"


def detect_hardware() -> Hardware:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu, mem = None, None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout.strip().splitlines()
            if out:
                name, total = out[0].rsplit(",", 1)
                gpu, mem = name.strip(), float(total) / 1024
        except (subprocess.SubprocessError, ValueError, OSError):
            pass
    return Hardware(cores=cores, ram_gb=ram, gpu=gpu, gpu_memory_gb=mem)
