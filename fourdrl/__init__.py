"""fourdrl: GRPO reinforcement learning from the DIFT checkpoint (spec fourdrl.md).

Not implemented yet. The pieces it will stand on exist: latent-aware rollouts with recorded latent
vectors (dift.generation), the replay forward that reproduces sampling log-probs (dift.replay), and
the answer extractor with letters A-F (evaluation.extraction) for the accuracy reward.
"""
