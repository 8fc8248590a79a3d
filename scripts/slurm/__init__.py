"""SLURM recipes: one sbatch file per stage, the per-node entry that srun starts, the host-list expansion."""
