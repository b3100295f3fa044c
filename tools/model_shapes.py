"""Named HF model shapes the benchmarks build with random weights (one definition each)."""

# Llama-3.2-1B: hidden 2048, 16 layers, 32 query / 8 KV heads (head 64), FFN 8192, vocab 128256,
# tied embeddings, llama3 rope scaling: 1.24 B parameters.
LLAMA_3_2_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    rope_theta=500000.0,
)
