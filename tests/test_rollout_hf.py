"""The HF rollout engine: grouping, seeding, masks, logprobs."""

import torch

from ondistill import batch as B
from ondistill.config import RolloutConfig
from ondistill.data import Example, collate_prompts
from workers.rollout.hf import HFRollout, response_mask


def test_response_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    assert response_mask(ids, {2}).tolist() == [
        [True, True, False, False],
        [True] * 4,
        [True, False, False, False],
    ]


def test_samples_grouped_seeded_and_logprobs_exact(tiny_dirs):
    _, student_dir = tiny_dirs
    engine = HFRollout(str(student_dir), RolloutConfig(n_samples=3, max_new_tokens=8, threads=1))
    prompts = collate_prompts([Example([1, 10, 11], None), Example([1, 20], None)], 2)
    a = engine.generate(prompts, seed=3)
    b = engine.generate(prompts, seed=3)
    c = engine.generate(prompts, seed=4)
    assert a.batch_size[0] == 6
    assert a[B.PROMPT_INDEX].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(a[B.PROMPT_IDS][3], prompts[B.PROMPT_IDS][1])
    assert torch.equal(a[B.RESPONSE_IDS], b[B.RESPONSE_IDS])
    assert not torch.equal(a[B.RESPONSE_IDS], c[B.RESPONSE_IDS])
    # recompute the sampled-token logprobs with a plain forward pass
    ids, mask, pos = B.full_sequence(a)
    logits = engine.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    lp = torch.log_softmax(logits[:, B.response_positions(a)].float(), -1)
    lp = lp.gather(-1, a[B.RESPONSE_IDS][..., None]).squeeze(-1)
    m = a[B.RESPONSE_MASK]
    torch.testing.assert_close(a[B.ROLLOUT_LOGPROBS][m], lp[m], rtol=1e-4, atol=1e-4)
