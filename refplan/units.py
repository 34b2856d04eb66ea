"""Units and byte sizes: integer bytes inside, units only at the edge.

GiB is 2**30 bytes and is printed as "GiB"; decimal GB (10**9) appears only where a vendor quotes
it (GPU catalog), converted once on load.
"""

KIB = 1024
MIB = 1024**2
GIB = 1024**3
GB = 10**9

#: bytes per element of each dtype name refplan accepts (torch names in parentheses).
DTYPE_BYTES: dict[str, int] = {
    "fp32": 4,  # torch.float32
    "bf16": 2,  # torch.bfloat16
    "fp16": 2,  # torch.float16
    "int8": 1,
    "int64": 8,  # token ids, labels, attention masks as the collators build them
    "bool": 1,
}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element for a refplan dtype name ("fp32", "bf16", "fp16", ...)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}") from None
