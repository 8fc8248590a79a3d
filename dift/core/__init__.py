"""The shared core of 4DThinker: the latent-imagery Qwen2.5-VL and every rule more than one stage uses.

tokens (names; ids read from the tokenizer), latent_config (config fields), latent_ops (pure tensor
functions), model (LatentQwen2_5_VL), checkpoint (loading), positions (M-RoPE positions, the original
rule), conversation (output-format suffix, question text, chat prompts), extraction (answer letters),
frames (media: sampling, decoding, cache, sizing), inputs (processor calls), kv_cache, generation
(latent-aware sampling), replay (teacher-forced log-probs with the fed latents).

Every stage (preprocess, dift training, fourdrl, evaluation) imports from here; nothing here imports a stage.
"""
