"""fourdrl: GRPO reinforcement learning from the DIFT checkpoint (spec fourdrl.md).

Not implemented yet. The pieces it will stand on exist: latent-aware rollouts with recorded latent
vectors (dift.core.generation), the replay forward that reproduces sampling log-probs (dift.core.replay), and
the answer extractor with letters A-F (dift.core.extraction) for the accuracy reward.
"""
