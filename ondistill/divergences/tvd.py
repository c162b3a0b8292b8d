"""Total variation distance: half the L1 distance between the two distributions."""

import torch

from ondistill.divergences import DivergenceParams, register


@register("tvd")
def tvd(student: torch.Tensor, teacher: torch.Tensor, p: DivergenceParams) -> torch.Tensor:
    return 0.5 * (torch.softmax(student, -1) - torch.softmax(teacher, -1)).abs().sum(-1)
