"""The speed variants the benchmarks compare, as TrainConfig overrides by name."""

VARIANTS = {
    "plain": dict(channels_last=False, fused_optimizer=False, compile=False, cuda_graphs=False, bf16=False),
    "ours": {},  # TrainConfig's defaults: what a sweep runs unless its spec says otherwise
    "fp32": dict(bf16=False),  # ours without bf16 autocast
    "+compile": dict(compile=True),
    "+cuda_graphs": dict(cuda_graphs=True),
    "+all": dict(compile=True, cuda_graphs=True),
}


def parse_variants(text: str, option: str) -> list[str]:
    """'ours,fp32' -> ['ours', 'fp32']; ValueError naming the option and the unknown name."""
    names = text.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"{option}: unknown {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    return names
