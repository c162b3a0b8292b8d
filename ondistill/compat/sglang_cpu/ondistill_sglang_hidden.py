"""OPTIONAL (enabled by env ONDISTILL_SGLANG_HIDDEN_TENSORS=1, which also needs
SGLANG_USE_PICKLE_IPC=1):
make the scheduler keep prefill hidden states as a CPU float tensor [n_tokens, hidden]
instead of `.tolist()` (sglang/srt/managers/scheduler_components/batch_result_processor.py:659),
so out["meta_info"]["hidden_states"][0] arrives in the caller as a torch.Tensor
(pickle IPC carries tensors; the default msgspec IPC is typed as nested float lists).
Applied in every process (incl. spawned scheduler) by ondistill_sglang_boot's post-import hook."""


def patch(mod):
    cls = mod.SchedulerBatchResultProcessor
    orig = cls._append_prefill_hidden_states

    def _append_prefill_hidden_states(
        self,
        *,
        req,
        logits_output,
        hidden_state_offset,
        capture_hidden_mode,
        extend_input_len,
        store=True,
    ):
        if capture_hidden_mode.is_full() and req.return_hidden_states is True:
            start = hidden_state_offset
            end = start + extend_input_len
            if store:
                req.hidden_states.append(
                    logits_output.hidden_states[start:end].detach().to("cpu", copy=True)
                )
            return end
        return orig(
            self,
            req=req,
            logits_output=logits_output,
            hidden_state_offset=hidden_state_offset,
            capture_hidden_mode=capture_hidden_mode,
            extend_input_len=extend_input_len,
            store=store,
        )

    cls._append_prefill_hidden_states = _append_prefill_hidden_states
