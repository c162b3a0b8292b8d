"""KDFlow's KD losses and ours on identical inputs: the same teacher hidden states, output
heads, student hidden states and mask, on CPU.

KDFlow (github.com/songmzhang/KDFlow; not on the package index and never part of this
repository) computes, in `VanillaKD.training_step`, full logits of every masked position from
the teacher's hidden states with the teacher's head and from the student's with the student's,
then `loss_fn(student_logits, teacher_logits, reduction="none").sum() / tokens` (its losses are
torch.compile'd). ondistill computes the same divergence chunk by chunk from hidden states
(`ondistill.losses.chunked_loss`), never holding the [tokens, vocab] logits. Both are run
here, the loss and its gradient with respect to the student's hidden states compared; writes
one JSON file:

    git -C <KDFlow clone> archive HEAD kdflow | tar -x -C .kdflow     # a git-ignored folder
    python scripts/kdflow_loss_check.py --kdflow .kdflow --out kdflow_loss_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ondistill.divergences import DivergenceParams  # noqa: E402
from ondistill.heads import HeadSpec, OutputHead  # noqa: E402
from ondistill.losses import HiddenTeacher, ObjectiveSpec, chunked_loss  # noqa: E402

# (KDFlow's loss name, its keyword arguments) -> (our divergence, our parameters). KDFlow's
# JSD mixes M = b S + (1 - b) T and weights KL(S || M) by b: ours (TRL's) is the mirror image,
# so KDFlow's jsd_beta b is our beta 1 - b.
PAIRS = [
    (("kl", {}), ("forward_kl", DivergenceParams())),
    (("rkl", {}), ("reverse_kl", DivergenceParams())),
    (("tvd", {}), ("tvd", DivergenceParams())),
    (("jsd", {"jsd_beta": 0.5}), ("jsd", DivergenceParams(beta=0.5))),
    (("jsd", {"jsd_beta": 0.1}), ("jsd", DivergenceParams(beta=0.9))),
]


def kdflow_loss(fn, s_hidden, s_weight, t_hidden, t_weight, temperature, kwargs):
    """KDFlow's VanillaKD arithmetic: full logits of the masked positions, summed per-token
    divergence over the token count."""
    teacher_logits = t_hidden.to(t_weight) @ t_weight.T
    student_logits = s_hidden @ s_weight.T
    per_token = fn(
        student_logits, teacher_logits, temperature=temperature, reduction="none", **kwargs
    )
    return per_token.sum() / s_hidden.shape[0]


def ours(s_hidden, s_weight, t_hidden, t_weight, divergence, params, temperature, chunk):
    n = s_hidden.shape[0]
    head = OutputHead(t_weight, HeadSpec())
    spec = ObjectiveSpec(divergence=divergence, params=params, temperature=temperature)
    weights = torch.full((n,), 1.0 / n)
    return chunked_loss(
        s_hidden, s_weight, HiddenTeacher(t_hidden, head), weights, spec, chunk_size=chunk
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kdflow", required=True, help="folder holding KDFlow's kdflow package")
    p.add_argument("--tokens", type=int, default=384, help="masked positions (rows x lengths)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=151_936, help="Qwen3's")
    p.add_argument("--chunk", type=int, default=128, help="our chunk of positions")
    p.add_argument("--out", default="")
    a = p.parse_args()
    sys.path.insert(0, str(Path(a.kdflow).resolve()))
    from kdflow.loss import LOSS_DICT

    g = torch.Generator().manual_seed(0)
    # a batch of 4 rows, padded to 160 positions; the mask picks a.tokens of them, as
    # KDFlow's loss mask and our response mask do
    mask = torch.zeros(4 * 160, dtype=torch.bool)
    mask[torch.randperm(4 * 160, generator=g)[: a.tokens]] = True
    t_all = torch.randn(4 * 160, a.hidden, generator=g) * 2
    s_all = torch.randn(4 * 160, a.hidden, generator=g) * 2
    t_weight = torch.randn(a.vocab, a.hidden, generator=g) / a.hidden**0.5
    s_weight = t_weight + 0.3 * torch.randn(a.vocab, a.hidden, generator=g) / a.hidden**0.5
    t_hidden = t_all[mask]
    rows = []
    for (k_name, k_args), (o_name, o_params) in PAIRS:
        for temperature in (1.0, 2.0):
            s1 = s_all[mask].clone().requires_grad_(True)
            s2 = s_all[mask].clone().requires_grad_(True)
            theirs = kdflow_loss(
                LOSS_DICT[k_name], s1, s_weight, t_hidden, t_weight, temperature, k_args
            )
            mine = ours(s2, s_weight, t_hidden, t_weight, o_name, o_params, temperature, a.chunk)
            theirs.backward()
            mine.backward()
            grad_err = ((s1.grad - s2.grad).norm() / s1.grad.norm()).item()
            row = {
                "kdflow": k_name,
                "kdflow_args": k_args,
                "ondistill": o_name,
                "ondistill_beta": o_params.beta,
                "temperature": temperature,
                "kdflow_loss": theirs.item(),
                "ondistill_loss": mine.item(),
                "loss_rel_diff": abs(theirs.item() - mine.item()) / abs(theirs.item()),
                "grad_rel_diff": grad_err,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    worst = max(max(r["loss_rel_diff"], r["grad_rel_diff"]) for r in rows)
    print(f"[kdflow-check] {len(rows)} cases, worst relative difference {worst:.2e}")
    if a.out:
        Path(a.out).write_text(json.dumps({"tokens": a.tokens, "vocab": a.vocab, "rows": rows}))


if __name__ == "__main__":
    main()
