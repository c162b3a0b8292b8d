"""The real cross-tokenizer teacher: Gemma-3-270M converted from its GGUF part packages."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ondistill.heads import HeadSpec, load_output_head


def test_gemma_conversion_is_sane_and_its_head_reproduces_hf_logits(gemma_dir):
    tok = AutoTokenizer.from_pretrained(gemma_dir)
    config = json.loads((gemma_dir / "config.json").read_text())
    assert config["vocab_size"] == 262_144 and config["tie_word_embeddings"]
    assert tok("Hi").input_ids[0] == tok.bos_token_id  # Gemma is far worse without its BOS
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    gen = json.loads((gemma_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, tok.convert_tokens_to_ids("<end_of_turn>")]

    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()
    text = (
        "The quick brown fox jumps over the lazy dog. Paris is the capital and most "
        "populous city of France."
    )
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state[0]
    assert out.loss.item() < 3.0  # a working 270M LM (measured 2.16 nats/token; broken: >5)
    head = load_output_head(gemma_dir)
    # The input embedding is scaled by sqrt(hidden) inside the model; the tied head is not.
    assert head.spec == HeadSpec() and head.weight.shape == (262_144, 640)
    torch.testing.assert_close(head.logits(hidden), out.logits[0], rtol=1e-5, atol=1e-4)
