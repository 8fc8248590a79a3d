"""DSR-benchmark evaluation: benchmark loading (`benchmark`), answer extraction and scoring shared
with the RL reward (`extraction`), per-sub-task aggregation and the printed table (`metrics`), the
batched / resumable / data-parallel evaluation CLI (`dsr_eval`), rescoring of results files
(`rescore`) and the multi-checkpoint launcher (`batch_dsr_eval.sh`)."""
