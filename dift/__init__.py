"""dift: the latent-imagery Qwen2.5-VL and everything that trains or runs it.

tokens (latent token names, ids from the tokenizer), latent_config (config fields), latent_ops
(pure tensor functions), model (LatentQwen2_5_VL), checkpoint (loading), conversation (the
output-format suffix, chat messages), inputs (processor calls), collator/data/trainer/train
(DIFT training), generation/replay (latent-aware sampling and teacher-forced replay), inference
(the single-video CLI).
"""
