"""Bad input fails early with one sentence naming what is wrong and how to fix it."""
import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from ondistill import batch as B
from ondistill.config import Config, ConfigError, DataConfig, validate
from ondistill.data import DataError, PromptSet
from ondistill.models import resolve


@pytest.mark.parametrize("key,value,needle", [
    ("rollout.backend", "bogus", "rollout.backend='bogus' is not valid; choose one of: auto, hf, vllm"),
    ("loss.divergence", "l2", "loss.divergence='l2' is not valid"),
    ("rollout.temperature", 0.0, "rollout.temperature=0.0 is out of range; it must be > 0"),
    ("trainer.on_policy_fraction", 1.5, "trainer.on_policy_fraction=1.5 is out of range"),
])
def test_bad_config_values(key, value, needle):
    cfg = Config()
    section, field = key.split(".")
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        validate(cfg)


def test_defaults_are_valid():
    validate(Config())


def test_missing_model_path(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json; give a local Hugging Face model"):
        resolve(str(tmp_path / "nope"), str(tmp_path))
    with pytest.raises(ConfigError, match="unknown builtin model 'gpt5'"):
        resolve("builtin:gpt5", str(tmp_path))


@pytest.mark.parametrize("line,needle", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "is a JSON list, not an object"),
    ('{"prompt": ""}', "'prompt' is missing or empty"),
    ('{"text": "hi"}', "'prompt' is missing or empty"),
    ('{"prompt": "hi", "response": 3}', "'response' is a int"),
    (json.dumps({"prompt": "word " * 400}), "over data.max_prompt_tokens=128"),
])
def test_bad_rows_name_file_and_line(tmp_path, tiny_dirs, line, needle):
    tok = AutoTokenizer.from_pretrained(tiny_dirs[1])
    path = tmp_path / "p.jsonl"
    good = [json.dumps({"prompt": f"p{i}"}) for i in range(5)]
    path.write_text("\n".join(good[:2] + [line] + good[2:]) + "\n")
    with pytest.raises(DataError, match=f"p.jsonl:3: .*{needle}.*data.bad_rows=skip"):
        PromptSet(DataConfig(prompts=str(path), eval_size=1), tok)
    skipped = PromptSet(DataConfig(prompts=str(path), eval_size=1, bad_rows="skip"), tok)
    assert skipped.skipped == 1 and len(skipped.train) == 4 and len(skipped.eval) == 1


def test_off_policy_needs_responses(tmp_path, tiny_dirs):
    tok = AutoTokenizer.from_pretrained(tiny_dirs[1])
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    ps = PromptSet(DataConfig(prompts=str(path), eval_size=1), tok)
    with pytest.raises(DataError, match="4 of 4 training rows have no 'response'"):
        ps.require_responses("off-policy batches")


def test_batch_check_names_the_key():
    import torch
    from tensordict import TensorDict

    td = TensorDict({B.PROMPT_IDS: torch.zeros(2, 3, dtype=torch.long)}, batch_size=[2])
    with pytest.raises(B.BatchError, match="teacher.score: batch has no 'prompt_mask'"):
        B.check(td, B.ROLLOUT, "teacher.score")
    td.set(B.PROMPT_MASK, torch.zeros(2, 3))  # float, not bool
    with pytest.raises(B.BatchError, match="'prompt_mask' is torch.float32"):
        B.check(td, B.PROMPTS, "rollout.generate")


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ondistill.main", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_cli_prints_config_and_rejects_bad_keys_before_work():
    shown = _cli("--cfg", "job", "recipe=gkd", "loss.chunk_size=64")
    assert shown.returncode == 0, shown.stderr
    assert "chunk_size: 64" in shown.stdout and "on_policy_fraction: 0.5" in shown.stdout
    unknown = _cli("rollout.temprature=0.5")
    assert unknown.returncode != 0 and "temprature" in unknown.stderr
    bad = _cli("rollout.backend=bogus", "model.teacher=/nonexistent")
    assert bad.returncode != 0
    assert "rollout.backend='bogus' is not valid; choose one of: auto, hf, vllm" in bad.stderr
    missing = _cli("model.teacher=/nonexistent")
    assert "model path '/nonexistent' has no config.json" in missing.stderr


def test_mismatched_tokenizers_are_refused_before_any_model_loads(tmp_path, tiny_dirs):
    import shutil

    from trainer.run import check_tokenizers

    other = tmp_path / "other-student"
    shutil.copytree(tiny_dirs[1], other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<only-in-the-student>"])
    tok.save_pretrained(other)
    with pytest.raises(ConfigError, match="tokenize differently; pick a student with the "
                                          "teacher's tokenizer"):
        check_tokenizers(tiny_dirs[0], other)
    assert check_tokenizers(tiny_dirs[0], tiny_dirs[1]) is not None
