"""The real vLLM (CPU) rollout engine behind the rollout interface."""

import math

import pytest
import torch

from ondistill import batch as B
from ondistill.config import RolloutConfig
from ondistill.data import Example, collate_prompts
from workers.rollout.vllm import VLLMRollout


def test_vllm_sampling_grouped_seeded_and_logprobs_match_forward(tiny_dirs):
    _, student_dir = tiny_dirs
    engine = VLLMRollout(
        str(student_dir),
        RolloutConfig(n_samples=3, max_new_tokens=10, threads=1, stop_token_ids=[17]),
    )
    prompts = collate_prompts([Example([1, 10, 11, 12], None), Example([1, 20], None)], 2)
    a, b = engine.generate(prompts, seed=5), engine.generate(prompts, seed=5)
    c = engine.generate(prompts, seed=6)
    assert a.batch_size[0] == 6 and a[B.PROMPT_INDEX].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(a[B.PROMPT_IDS][4], prompts[B.PROMPT_IDS][1])
    assert torch.equal(a[B.RESPONSE_IDS], b[B.RESPONSE_IDS])
    assert not torch.equal(a[B.RESPONSE_IDS], c[B.RESPONSE_IDS])
    assert len({tuple(r.tolist()) for r in a[B.RESPONSE_IDS][:3]}) > 1  # n samples differ
    # no token after a stop token
    for ids, m in zip(a[B.RESPONSE_IDS], a[B.RESPONSE_MASK], strict=True):
        real = ids[m].tolist()
        assert all(t not in (17, 2) for t in real[:-1])

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    ids, mask, pos = B.full_sequence(a)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    lp = torch.log_softmax(logits[:, B.response_positions(a)], -1)
    lp = lp.gather(-1, a[B.RESPONSE_IDS][..., None]).squeeze(-1)
    m = a[B.RESPONSE_MASK]
    torch.testing.assert_close(a[B.ROLLOUT_LOGPROBS][m], lp[m], rtol=1e-5, atol=1e-4)


def test_no_rollout_between_dropping_weights_and_the_next_push(tiny_dirs):
    """sleep(drop_weights=True) (rollout.sleep_level=2 frees the weights on GPU) holds on every
    device: a generate before the next weight push is refused, one after it samples from the
    pushed weights. The controller's steps in every other CPU test go through this check."""
    from transformers import AutoModelForCausalLM

    _, student_dir = tiny_dirs
    engine = VLLMRollout(
        str(student_dir), RolloutConfig(n_samples=1, max_new_tokens=6, threads=1, sleep_level=2)
    )
    prompts = collate_prompts([Example([1, 10, 11, 12], None)], 2)
    before = engine.generate(prompts, seed=1)
    engine.sleep()  # weights kept: generating again is fine
    assert torch.equal(engine.generate(prompts, seed=1)[B.RESPONSE_IDS], before[B.RESPONSE_IDS])
    engine.sleep(drop_weights=True)
    with pytest.raises(RuntimeError, match="no weights were pushed since"):
        engine.generate(prompts, seed=1)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    engine.update_weights((k, v * 0) for k, v in model.state_dict().items())
    engine.flush()
    after = engine.generate(prompts, seed=1)  # all-zero weights: every log-prob is -log V
    vocab = model.config.vocab_size
    m = after[B.RESPONSE_MASK]
    expected = torch.full_like(after[B.ROLLOUT_LOGPROBS][m], -math.log(vocab))
    torch.testing.assert_close(after[B.ROLLOUT_LOGPROBS][m], expected, rtol=0, atol=1e-4)


def test_compiled_decode_samples_what_eager_does(ray_local, tiny_dirs):
    """rollout.compile=true (vLLM's torch.compile'd decode on CPU; CUDA graphs on GPU) changes
    speed, not samples: same seed, same tokens, same log-probs."""
    from workers.group import RolloutGroup

    _, student_dir = tiny_dirs
    prompts = collate_prompts([Example([1, 10, 11, 12], None), Example([1, 20], None)], 2)
    from tests.conftest import dynamo_graphs

    out, graphs = {}, {}
    for compiled in (False, True):
        engine = RolloutGroup(
            "vllm",
            str(student_dir),
            RolloutConfig(n_samples=2, max_new_tokens=10, threads=1, compile=compiled),
        )
        out[compiled] = engine.generate(prompts, seed=3)
        graphs[compiled] = dynamo_graphs(engine.actors[0])  # in-process engine: the actor's own
        engine.kill()
    # vLLM compiles a helper graph or two either way; the compiled decode adds the model's
    assert graphs[True] > graphs[False], graphs
    assert torch.equal(out[True][B.RESPONSE_IDS], out[False][B.RESPONSE_IDS])
    m = out[False][B.RESPONSE_MASK]
    assert m.sum() > 4
    torch.testing.assert_close(
        out[True][B.ROLLOUT_LOGPROBS][m], out[False][B.ROLLOUT_LOGPROBS][m], rtol=1e-5, atol=1e-4
    )
