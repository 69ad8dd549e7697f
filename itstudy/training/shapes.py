"""The named from-scratch shapes, as plain data: `models` builds them, and the benchmark's command
line lists them without importing torch (`itstudy bench train --help` answers in well under 2 s).
Named `scratch/<shape>`: the bare names are pretrained checkpoints on the Hugging Face Hub."""

# The T5 v1.1 / lm-adapt architectures (google/t5-v1_1-*, google/t5-*-lm-adapt config.json files).
_V11 = {"feed_forward_proj": "gated-gelu", "d_kv": 64, "relative_attention_num_buckets": 32}
NAMED_SHAPES: dict[str, dict] = {
    # Not a public shape: tied input and output embeddings (as in the original T5, unlike v1.1), so
    # the decoder can answer with a word by reproducing its embedding from the prompt.
    "scratch/t5-tiny": {"feed_forward_proj": "gated-gelu", "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4,
                        "tie_word_embeddings": True},
    "scratch/t5-small": {**_V11, "d_model": 512, "d_ff": 1024, "num_layers": 8, "num_heads": 6},
    "scratch/t5-base": {**_V11, "d_model": 768, "d_ff": 2048, "num_layers": 12, "num_heads": 12},
    "scratch/t5-large": {**_V11, "d_model": 1024, "d_ff": 2816, "num_layers": 24, "num_heads": 16},
    "scratch/t5-xl": {**_V11, "d_model": 2048, "d_ff": 5120, "num_layers": 24, "num_heads": 32},
}

# Decoder-only shapes. Not public shapes: tied embeddings, as t5-tiny, and positions enough for a
# 1024-token prompt and a 128-token target.
CAUSAL_SHAPES: dict[str, dict] = {
    "scratch/llama-tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True},
}
