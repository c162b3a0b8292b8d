"""Pure-torch stand-in for the few CPU ops SGLang (SGLANG_USE_CPU_ENGINE=1) imports from
`sgl_kernel` (whose PyPI wheel is CUDA-only). Enough for dense-model prefill/decode with
attention_backend="torch_native". No torch.ops.sgl_kernel ops are registered, so
sglang's cpu_has_amx_support() stays False and native torch paths are used."""


def assign_req_to_token_pool_cpu(
    req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len
):
    # req_to_token[req_pool_indices[i], start[i]:end[i]] = next (end-start) entries of out_cache_loc
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    rows = req_pool_indices.tolist()
    off = 0
    for r, s, e in zip(rows, starts, ends, strict=True):
        n = e - s
        if n > 0:
            req_to_token[r, s:e] = out_cache_loc[off : off + n].to(req_to_token.dtype)
        off += n


def __getattr__(name):
    # Other CPU-gated ops (`from sgl_kernel import xxx_cpu` under `if _is_cpu:`) only need to
    # import; they are used by features we don't use (spec decoding, MoE, mamba, ...).
    if name.endswith("_cpu"):

        def _missing(*args, **kwargs):
            raise NotImplementedError(f"sgl_kernel shim: {name} not implemented")

        _missing.__name__ = name
        return _missing
    raise AttributeError(name)
