"""The named T5 shapes, as plain data: `models` builds them, and the benchmark's command line lists
them without importing torch (`itstudy bench train --help` answers in well under 2 s)."""

# The T5 v1.1 / lm-adapt architectures (google/t5-v1_1-*, google/t5-*-lm-adapt config.json files).
_V11 = {"feed_forward_proj": "gated-gelu", "d_kv": 64, "relative_attention_num_buckets": 32}
NAMED_SHAPES: dict[str, dict] = {
    # Not a public shape: tied input and output embeddings (as in the original T5, unlike v1.1), so
    # the decoder can answer with a word by reproducing its embedding from the prompt.
    "t5-tiny": {"feed_forward_proj": "gated-gelu", "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4,
                "tie_word_embeddings": True},
    "t5-small": {**_V11, "d_model": 512, "d_ff": 1024, "num_layers": 8, "num_heads": 6},
    "t5-base": {**_V11, "d_model": 768, "d_ff": 2048, "num_layers": 12, "num_heads": 12},
    "t5-large": {**_V11, "d_model": 1024, "d_ff": 2816, "num_layers": 24, "num_heads": 16},
    "t5-xl": {**_V11, "d_model": 2048, "d_ff": 5120, "num_layers": 24, "num_heads": 32},
}
