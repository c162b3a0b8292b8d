"""One FSDP2 rank of the student, run as a Ray actor (one per rank; gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
import torch.distributed as dist
from tensordict import TensorDict

from ondistill import batch as B
from ondistill.config import LossConfig, StudentConfig
from ondistill.consistency import add, rank_sums
from ondistill.heads import load_output_head
from ondistill.objective import ObjectiveSpec
from ondistill.packing import attention, even_out, micro_batches
from ondistill.xtok.losses import trim_teacher_padding
from workers.compile import wants_compile
from workers.student import sync
from workers.student.kd_model import KDModel, TeacherHead, parallelize
from workers.student.lr import lr_lambda
from workers.student.step_metrics import signal_metrics
from workers.weights import receive


class StudentWorker:
    def __init__(self, rank: int, world_size: int, cfg: StudentConfig, loss: LossConfig):
        self.rank, self.world_size, self.cfg, self.loss_cfg = rank, world_size, cfg, loss
        torch.set_num_threads(max(1, cfg.threads))
        # Self-distillation's EMA teacher: a moving average of this rank's parameter shards
        # (DTensors like the parameters), updated after every optimizer step.
        self.ema: dict[str, torch.Tensor] | None = None
        self.ema_decay = 0.0

    def track_ema(self, decay: float) -> None:
        """Start the EMA from the current weights (call after setup)."""
        self.ema_decay = decay
        self.ema = {n: p.detach().clone() for n, p in self.model.lm.named_parameters()}

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for the process group (called on rank 0 only)."""
        from workers.ray_env import free_address

        return free_address()

    def setup(
        self,
        master: tuple[str, int],
        student_dir: str,
        teachers: dict[str, tuple[str, str]],
        total_steps: int,
    ) -> int:
        """Join the process group, load and shard the student with an output head per teacher
        (teachers: name -> (model directory, cross-tokenizer method)), build optimizer and
        schedule. Returns the number of student parameters."""
        from transformers import AutoModelForCausalLM

        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = master[0], str(master[1])
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        dist.init_process_group(
            "nccl" if self.device.type == "cuda" else "gloo",
            rank=self.rank,
            world_size=self.world_size,
        )
        mesh = torch.distributed.device_mesh.init_device_mesh(self.device.type, (self.world_size,))
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_pretrained(
            student_dir,
            dtype=torch.float32,
            attn_implementation=attention(self.cfg.packing, self.device),
        )
        self.several = len(teachers) > 1  # metrics per teacher as well (loss/<name>, ...)
        kd = KDModel(
            lm.to(self.device),
            {name: self._teacher_head(student_dir, *t) for name, t in teachers.items()},
            self.loss_cfg.chunk_size,
            self.cfg.packing,
            self.cfg.micro_batch_tokens if self.device.type == "cuda" else 0,
        )
        self.model: Any = parallelize(  # KDModel, made an FSDPModule by fully_shard
            kd,
            mesh,
            getattr(torch, self.cfg.param_dtype),
            wants_compile(self.cfg.compile, self.device),
        )
        # CPU: the fused kernel makes one pass over the parameters instead of ~10 (measured
        # 0.2 s of a 2.4 s step for a 50M student); GPU keeps the default (foreach).
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.cfg.lr,
            weight_decay=self.cfg.weight_decay,
            fused=True if self.device.type == "cpu" else None,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.cfg, total_steps)
        )
        return sum(p.numel() for p in lm.parameters())

    def _teacher_head(self, student_dir: str, teacher_dir: str, method: str) -> TeacherHead:
        head = load_output_head(teacher_dir)
        # In the student's compute dtype: an fp32 teacher head next to bf16 hidden states
        # would run the largest matmul of the loss in fp32 (measured: 36% of an H200 step).
        head.weight = head.weight.to(self.device, getattr(torch, self.cfg.param_dtype))
        if method == "none":
            return TeacherHead(head)
        from transformers import AutoTokenizer

        from ondistill.xtok.vocab import shared_vocab_of

        tokenizers = (AutoTokenizer.from_pretrained(d) for d in (student_dir, teacher_dir))
        return TeacherHead(head, method, shared_vocab_of(*tokenizers))

    def _inputs(self, td: TensorDict):
        ids, mask, pos = B.full_sequence(td)
        dev = self.device
        return ids.to(dev), mask.to(dev), pos.to(dev), B.response_positions(td).start

    def _weights(self, mb: TensorDict, part: B.TeacherPart) -> torch.Tensor:
        """Per-token loss weights [b, R] that make the sum over all ranks and micro-batches the
        configured mean over the part's teacher's rows, times its scale. FSDP2 averages
        gradients over ranks, so each rank's share is scaled back up by world_size."""
        mask = mb[B.RESPONSE_MASK].float()
        if self.loss_cfg.reduction == "sequence":
            w = mask / mask.sum(1, keepdim=True).clamp_min(1) / part.rows
        else:
            w = mask / max(1, part.tokens)
        return (w * part.scale * self.world_size).to(self.device)

    def train_step(
        self,
        parts: list[B.TeacherPart],
        objective: str | None = None,
        divergence: str | None = None,
        lr_scale: float = 1.0,
    ) -> dict[str, float]:
        """One optimizer step on this rank's rows, one part per teacher, accumulated over
        micro-batches; objective and divergence replace the loss config's for this step (a
        schedule's stage). Each part's batch is its rows or a Ray reference to them
        (TeacherSet.score_parts), fetched here."""
        fetch_start = time.perf_counter()
        scored = [(p, self._fetch(p.batch)) for p in parts]
        fetch_s = time.perf_counter() - fetch_start
        spec = self.loss_cfg.spec(objective, divergence)
        self.model.train()
        micro = self._micro_batches(scored)
        totals = {"loss": 0.0, "kl": 0.0}
        consistency: dict[str, float] = {}
        for i, (part, mb) in enumerate(micro):
            self.model.set_requires_gradient_sync(i == len(micro) - 1)
            loss, div, lp = self._forward(part, mb, spec)
            if lp is not None:
                keep = mb[B.RESPONSE_MASK]
                replica = mb[B.ROLLOUT_REPLICA][:, None].expand_as(keep)[keep]
                rollout_lp = mb[B.ROLLOUT_LOGPROBS][keep]
                add(consistency, rank_sums(lp.cpu(), rollout_lp, replica))
            loss.backward()
            shares = {"loss": loss.item() / self.world_size, "kl": div / self.world_size}
            for key, share in shares.items():
                totals[key] += share
                if self.several:  # each teacher's own mean, before its scale
                    name = f"{key}/{part.teacher}"
                    totals[name] = totals.get(name, 0.0) + share / part.scale
        grad_norm = self._clip()
        lr, applied = self._update(lr_scale, grad_norm)
        out = {**totals, "grad_norm": grad_norm, "lr": lr, "fetch_s": fetch_s, **consistency}
        out["skipped"] = float(not applied)
        out["weights_finite"] = float(self._weights_finite())
        for part, td in scored:
            out.update(signal_metrics(part, td, self.several))
        if self.device.type == "cuda":
            # allocator retries = the card ran full and blocks were freed mid-step (slow)
            out["alloc_retries"] = torch.cuda.memory_stats().get("num_alloc_retries", 0)
            torch.cuda.empty_cache()  # the teacher and rollout share this card
        return out

    def _fetch(self, td: Any) -> TensorDict:
        """A part's scored rows here: fetched if a reference, an IPC handle mapped."""
        import ray

        if isinstance(td, ray.ObjectRef):
            td = ray.get(td)
        return receive(B.check_scored(td, "student.train_step"))

    def _forward(self, part: B.TeacherPart, mb: TensorDict, spec: ObjectiveSpec):
        """(loss, divergence, sampled tokens' log-probs or None) of one micro-batch."""
        ids, mask, pos, start = self._inputs(mb)
        signal = B.signal_of(mb)  # after receive: an IPC handle has become the tensor
        extras = {
            "targets": mb[B.RESPONSE_IDS].to(self.device),
            "rollout_logprobs": mb[B.ROLLOUT_LOGPROBS].to(self.device),
        }
        return self.model(
            ids,
            mask,
            pos,
            start,
            signal,
            self._teacher(mb, signal),
            self._weights(mb, part),
            extras,
            spec,
            self.loss_cfg.pg_discount,
            B.ROLLOUT_REPLICA in mb.keys(),  # on-policy rows: compare with the sampler
            part.teacher,
        )

    def _micro_batches(
        self, parts: list[tuple[B.TeacherPart, TensorDict]]
    ) -> list[tuple[B.TeacherPart, TensorDict]]:
        """This rank's rows in micro-batches of one part each: of student.micro_batch_size
        rows, or within student.micro_batch_tokens tokens (ondistill/packing.py), as many on
        every rank (each forward all-gathers the sharded weights on all of them; with several
        teachers their rows fall unevenly on the ranks). An empty one (a rank with fewer rows
        than the others' micro-batches) runs a row at zero weight."""
        bins: list[list[int]] = []
        owner: list[int] = []  # the part of each of this rank's rows, numbered across parts
        for i, (_, td) in enumerate(parts):
            rows = td.batch_size[0]
            if self.cfg.micro_batch_tokens:
                tokens = B.row_tokens(td)
                local = micro_batches(tokens, self.cfg.micro_batch_tokens, self.cfg.packing)
            else:
                step = self.cfg.micro_batch_size
                local = [list(range(j, min(j + step, rows))) for j in range(0, rows, step)]
            bins += [[len(owner) + r for r in b] for b in local]
            owner += [i] * rows
        count = torch.tensor(len(bins), device=self.device)  # nccl reduces on the GPU
        if self.world_size > 1:
            dist.all_reduce(count, dist.ReduceOp.MAX)
        out = []
        for rows in even_out(bins, int(count)):
            i = owner[rows[0]] if rows else 0
            part, td = parts[i]
            first = owner.index(i)  # the part's first row in the numbering
            mb = _take(td, [r - first for r in rows] or [0])
            if not rows:
                mb.set(B.RESPONSE_MASK, torch.zeros_like(mb[B.RESPONSE_MASK]))
            out.append((part, mb))
        return out

    def _teacher(self, td: TensorDict, signal: B.Signal) -> dict[str, torch.Tensor]:
        """The tensors of the batch's teacher signal on this rank's device, by batch key."""
        if signal is B.Signal.ALIGNED:
            td = trim_teacher_padding(td)
        return {k: td[k].to(self.device) for k in B.teacher_keys(signal)}

    @torch.no_grad()
    def xtok_stats(self, td: TensorDict, teacher: str | None = None) -> dict[str, torch.Tensor]:
        """Per aligned chunk metrics of this rank's rows (cross-tokenizer batches) against the
        teacher called `teacher`."""
        self.model.eval()
        ids, mask, pos, start = self._inputs(td)
        out = self.model.xtok_stats(
            ids,
            mask,
            pos,
            start,
            td[B.RESPONSE_IDS].to(self.device),
            self._teacher(td, B.Signal.ALIGNED),
            teacher,
        )
        return {k: v.cpu() for k, v in out.items()}

    def _update(self, lr_scale: float, grad_norm: float) -> tuple[float, bool]:
        """The optimizer step at lr_scale x the schedule's rate, and the EMA after it; skipped
        when the gradient is not finite (the norm is global over the mesh, so every rank skips
        alike): NaN or inf gradients would make every weight NaN, and every checkpoint after.
        Returns (the rate, whether the update was applied)."""
        applied = math.isfinite(grad_norm)
        for group in self.optimizer.param_groups:  # the scheduler sets it afresh every step
            group["lr"] *= lr_scale
        lr = float(self.optimizer.param_groups[0]["lr"])
        if applied:
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None and applied:
            with torch.no_grad():
                for name, p in self.model.lm.named_parameters():
                    self.ema[name].lerp_(p.detach(), 1 - self.ema_decay)
        self.optimizer.zero_grad(set_to_none=True)
        return lr, applied

    @torch.no_grad()
    def _weights_finite(self) -> bool:
        """Whether this rank's shards of the weights hold only finite values (an applied
        update can still overflow them)."""
        local = [p.to_local() if hasattr(p, "to_local") else p for p in self.model.parameters()]
        return bool(torch.stack([t.isfinite().all() for t in local]).all())

    def _clip(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    @torch.no_grad()
    def token_stats(
        self, td: TensorDict, divergences: tuple[str, ...] = (), teacher: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-response-token stats of this rank's rows (flattened over response_mask) against
        the teacher called `teacher`."""
        self.model.eval()
        td = receive(td)
        ids, mask, pos, start = self._inputs(td)
        keep = td[B.RESPONSE_MASK].to(self.device)
        th = td.get(B.TEACHER_HIDDEN, None)
        out = self.model.stats(
            ids,
            mask,
            pos,
            start,
            td[B.RESPONSE_IDS].to(self.device),
            keep,
            th.to(self.device) if th is not None else None,
            divergences,
            teacher,
        )
        return {k: v.cpu() for k, v in out.items()}

    def full_state(self, ema: bool = False, on_gpu: bool = False) -> dict[str, torch.Tensor]:
        """The parameters (or their EMA) as full tensors on rank 0 (workers/student/sync.py)."""
        return sync.full_params(self, ema, on_gpu)

    def push_teacher(self, teachers: list, ema: bool, bucket_mb: int = 256) -> int:
        """Self-distillation: the weights (or their EMA) into the teacher engine actors."""
        return sync.push_to_teachers(self, teachers, ema, bucket_mb)

    def push_weights(self, engines: list, bucket_mb: int = 256) -> int:
        """The weights into the rollout engine actors; bytes sent per engine."""
        return sync.push_to_engines(self, engines, bucket_mb)

    def save_hf(self, path: str, student_dir: str) -> None:
        """Write the student in Hugging Face format (rank 0 writes; all ranks must call)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        state = sync.model_state(self)
        if self.rank == 0:
            lm = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
            lm.load_state_dict(state)
            lm.save_pretrained(path, safe_serialization=True)
            AutoTokenizer.from_pretrained(student_dir).save_pretrained(path)
        dist.barrier()

    def save(self, path: str) -> None:
        """Sharded model + optimizer state (torch.distributed.checkpoint, every rank writes
        its shards) plus LR schedule and RNG states. All ranks must call it."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        if self.ema is not None:
            state["ema"] = self.ema
        dcp.save(state, checkpoint_id=f"{path}/student")
        torch.save(
            {"scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state()},
            f"{path}/student_extra_rank{self.rank}.pt",
        )
        dist.barrier()

    def load(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        if self.ema is not None:
            state["ema"] = self.ema  # loaded in place
        dcp.load(state, checkpoint_id=f"{path}/student")
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
        extra = torch.load(f"{path}/student_extra_rank{self.rank}.pt", weights_only=False)
        self.scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["rng"])


def _take(td: TensorDict, rows: list[int]) -> TensorDict:
    """td's rows: a view when they are contiguous (one micro-batch of a row-split part)."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return td[rows[0] : rows[0] + len(rows)]
    return td[torch.tensor(rows)]
