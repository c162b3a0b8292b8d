"""The real SGLang (CPU) teacher engine: hidden states, KD loss and weight updates equal the
HF teacher's; a whole run through the controller with teacher.backend=sglang."""

import json

import pytest
import torch

from ondistill import batch as B
from ondistill.config import TeacherConfig
from ondistill.data import Example, collate_prompts, collate_responses
from ondistill.heads import load_output_head
from tests.helpers import chunked_kd_loss


class Remote:
    """Calls a Ray actor's methods as if it were local."""

    def __init__(self, actor):
        self.actor = actor

    def __getattr__(self, name):
        import ray

        return lambda *args: ray.get(getattr(self.actor, name).remote(*args))


@pytest.fixture(scope="module")
def engines(ray_local, smollm2_dir):
    """SGLang in its own Ray actor, as TeacherGroup places it: SGLang's shutdown kills every
    child process of its host, which in the test process would include Ray's own."""
    import ray

    from workers.teacher.hf import HFTeacher
    from workers.teacher.sglang import SGLangTeacher

    actor = ray.remote(num_cpus=1)(SGLangTeacher).remote(str(smollm2_dir), TeacherConfig(threads=2))
    sgl = Remote(actor)
    yield sgl, HFTeacher(str(smollm2_dir), TeacherConfig(threads=2))
    sgl.shutdown()
    ray.kill(actor)


# Relative to the activations' size plus a small absolute floor for values near zero.
HIDDEN_TOL = {"rtol": 1e-4, "atol": 1e-4}


def mixed_batch():
    """Prompts of 3..9 tokens (left-padded), responses of 1..12 tokens (right-padded)."""
    g = torch.Generator().manual_seed(0)
    prompts = [
        Example([1] + torch.randint(3, 49000, (n,), generator=g).tolist(), None)
        for n in (2, 8, 5, 4)
    ]
    td = collate_prompts(prompts, 2)
    responses = [torch.randint(3, 49000, (n,), generator=g).tolist() for n in (12, 1, 7, 3)]
    td = collate_responses(td, responses, 2, 16)
    td.set(B.ROLLOUT_LOGPROBS, torch.zeros(td[B.RESPONSE_IDS].shape))
    return td


def test_hidden_states_equal_hf(engines):
    sgl, hf = engines
    a, b = sgl.score(mixed_batch()), hf.score(mixed_batch())
    m = a[B.RESPONSE_MASK]
    assert a[B.TEACHER_HIDDEN].shape == b[B.TEACHER_HIDDEN].shape
    assert a[B.TEACHER_HIDDEN][m].abs().mean() > 0.1  # real values, not padding
    # float32 engines with different reduction orders: hidden values reach ~24, so the error
    # scales with them (seen: 1.1e-4 absolute, 4e-6 relative on another CPU).
    torch.testing.assert_close(a[B.TEACHER_HIDDEN][m], b[B.TEACHER_HIDDEN][m], **HIDDEN_TOL)


def test_recomputed_logits_give_the_same_kd_loss(engines, smollm2_dir):
    sgl, hf = engines
    a, b = sgl.score(mixed_batch()), hf.score(mixed_batch())
    head = load_output_head(smollm2_dir)
    torch.manual_seed(0)
    n = int(a[B.RESPONSE_MASK].sum())
    student_h, student_w = torch.randn(n, 576), head.weight + 0.01 * torch.randn_like(head.weight)
    m = a[B.RESPONSE_MASK]
    w = torch.full((n,), 1.0 / n)
    la = chunked_kd_loss(student_h, student_w, a[B.TEACHER_HIDDEN][m], head, w, "forward_kl")
    lb = chunked_kd_loss(student_h, student_w, b[B.TEACHER_HIDDEN][m], head, w, "forward_kl")
    assert la.item() == pytest.approx(lb.item(), rel=1e-4)


def test_weight_update_changes_outputs_to_the_new_weights(engines, smollm2_dir):
    from transformers import AutoModelForCausalLM

    from workers.teacher.hf import HFTeacher

    sgl, _ = engines
    before = sgl.score(mixed_batch())[B.TEACHER_HIDDEN]
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    torch.manual_seed(1)
    new = {
        k: v + 0.02 * torch.randn_like(v)
        for k, v in model.state_dict().items()
        if "layers.3." in k or "norm.weight" == k.split("model.")[-1]
    }
    sgl.update_weights(list(new.items()))
    model.load_state_dict(new, strict=False)
    ref = HFTeacher.__new__(HFTeacher)  # the HF teacher, on the new weights
    ref.dtype, ref.device, ref.topk, ref.micro = torch.float32, torch.device("cpu"), 0, 0
    ref.cfg = TeacherConfig()
    ref.decoder = model.model
    after, expected = sgl.score(mixed_batch()), ref.score(mixed_batch())
    m = after[B.RESPONSE_MASK]
    assert (after[B.TEACHER_HIDDEN][m] - before[m]).abs().max() > 1e-2
    torch.testing.assert_close(
        after[B.TEACHER_HIDDEN][m], expected[B.TEACHER_HIDDEN][m], **HIDDEN_TOL
    )


def test_run_with_sglang_teacher(ray_local, tiny_dirs, prompts_file, tmp_path):
    from tests.test_run import tiny_config
    from trainer.run import run

    cfg = tiny_config(tiny_dirs, prompts_file, tmp_path, steps=3)
    cfg.teacher.backend = "sglang"
    results = run(cfg, tmp_path / "out")
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in rows) == 3
    assert (
        results["after"]["eval/rkl_student_samples"] < results["before"]["eval/rkl_student_samples"]
    )
