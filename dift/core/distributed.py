"""The process layout of a run, read from what the launcher put in the environment: this
process's rank, the world size, and how the processes spread over nodes.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK (the node) and
GROUP_WORLD_SIZE (the nodes); the DeepSpeed launcher sets LOCAL_SIZE, CROSS_RANK and CROSS_SIZE
instead of the last three. A plain `python` run is one process on one node.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


def _first_int(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = env.get(name, "")
        if value.strip():
            return int(value)
    return default


@dataclass(frozen=True)
class ProcessLayout:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's index on its node: its GPU is cuda:<local_rank>
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProcessLayout:
        env = os.environ if env is None else env
        world_size = _first_int(env, ("WORLD_SIZE",), 1)
        # Without a per-node count (a launcher that sets only RANK/WORLD_SIZE), assume one node.
        local_world_size = _first_int(env, ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"), world_size)
        return cls(
            rank=_first_int(env, ("RANK",), 0),
            world_size=world_size,
            local_rank=_first_int(env, ("LOCAL_RANK",), 0),
            local_world_size=local_world_size,
            node_rank=_first_int(env, ("GROUP_RANK", "CROSS_RANK"), 0),
            num_nodes=_first_int(env, ("GROUP_WORLD_SIZE", "CROSS_SIZE"), -(-world_size // local_world_size)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """One line for the start of a run's log."""
        return (f"world size {self.world_size}: {self.num_nodes} node(s) x {self.local_world_size} process(es) "
                f"per node; rank {self.rank} = node {self.node_rank}, local rank {self.local_rank}")
