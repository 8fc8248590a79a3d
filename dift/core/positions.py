"""M-RoPE position ids of Qwen2.5-VL, by the original's rule: THE function every forward uses (DIFT
training, generation, replay, RL), through `LatentQwen2_5_VL` and `dift.core.generation.prompt_positions`.

Every token gets a (time, height, width) position. Text tokens get the same value on all three axes,
counting up by one. A vision block of merged grid (t, h', w') starting at cursor s gives its token
(i, r, c) the position (s + floor(i * interval), s + r, s + c), interval = tokens_per_second *
second_per_grid_ts (1 for images). **The text after a block starts at the block's largest position + 1.**

That last rule is the original's (its transformers 4.50 fork, Qwen's own `get_rope_index` docstring,
the published checkpoints). transformers 5.24 keeps the positions inside a block but starts the
following text at s + max(h', w'), ignoring the block's time extent: for a 50-frame clip every later
token sits ~77 positions early, inside the video's time range. Inside blocks the two agree, and for
images and short videos everything agrees.

Vectorised over the whole padded batch (no per-row Python loop): each real token contributes to a
running cursor (a text token 1; a vision block its extent, at its last token), and an exclusive
cumulative sum per row gives every token's block or text start.

Worked example (one row, 4 text tokens, a video of grid t=3, h'=2, w'=2 at interval 4, 2 text tokens):
text 0..3; video time 4, 4, 4, 4, 8, 8, 8, 8, 12, ... height 4, 4, 5, 5, ... width 4, 5, 4, 5, ...;
the block's largest position is 4 + 8 = 12, so the text after it is at 13, 14 (upstream 5.24: 6, 7).
"""

from __future__ import annotations

import torch

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values (as the processor returns them)


def mrope_position_ids(input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor,
                       image_grid_thw: torch.Tensor | None = None, video_grid_thw: torch.Tensor | None = None,
                       second_per_grid_ts: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                       *, spatial_merge_size: int, tokens_per_second: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (3, B, T) of a padded batch and each row's next position (B,) (largest + 1).

    Padding (attention_mask 0, left or right) is skipped: positions count over the real tokens and
    padded slots get 0. Grids are consumed in order over the batch (row by row, left to right),
    images from `image_grid_thw`, videos from `video_grid_thw` (one `second_per_grid_ts` each,
    default 1.0), as the processor emits them.
    """
    batch, length = input_ids.shape
    device = input_ids.device
    mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
            else attention_mask.to(device).bool())
    flat = mask.flatten().nonzero()[:, 0]  # real tokens, row-major
    row = flat // length
    kind = mm_token_type_ids.to(device).flatten()[flat].long()
    n = flat.numel()
    positions = torch.zeros((3, batch, length), dtype=torch.long, device=device)
    if n == 0:
        return positions, torch.zeros(batch, dtype=torch.long, device=device)

    # Vision blocks: maximal runs of one vision kind within a row.
    vision = kind != TEXT
    new_run = torch.ones(n, dtype=torch.bool, device=device)
    new_run[1:] = (kind[1:] != kind[:-1]) | (row[1:] != row[:-1])
    starts = vision & new_run
    grid, interval = _block_grids(kind, starts, image_grid_thw, video_grid_thw, second_per_grid_ts,
                                  tokens_per_second, device)
    block = starts.long().cumsum(0) - 1  # block number of each vision token (-1 before the first)
    index = torch.arange(n, device=device)
    offset = index - torch.cummax(torch.where(starts, index, 0), dim=0).values  # rank inside the block
    merged = grid.clone()
    merged[:, 1:] //= spatial_merge_size
    if merged.shape[0]:
        lengths = torch.bincount(block[vision], minlength=merged.shape[0])
        expected = merged.prod(dim=1)
        if not torch.equal(lengths, expected):
            bad = int((lengths != expected).nonzero()[0, 0])
            raise ValueError(f"vision block {bad} has {int(lengths[bad])} tokens but its grid "
                             f"{grid[bad].tolist()} needs {int(expected[bad])}")
    else:  # text only: a dummy grid that no vision token gathers
        merged = torch.ones((1, 3), dtype=torch.long, device=device)
        interval = torch.ones(1, dtype=torch.float32, device=device)
    b = block.clamp(min=0)
    t_n, h_n, w_n = merged[b, 0], merged[b, 1], merged[b, 2]

    # Offsets inside the block (upstream's: time truncated after the multiplication).
    t_i = offset // (h_n * w_n)
    t_off = (t_i.to(interval.dtype) * interval[b]).long()
    h_off = (offset // w_n) % h_n
    w_off = offset % w_n
    # Each token's contribution to the row's cursor: 1 per text token; a block adds its extent
    # (largest offset + 1) at its last token.
    last_t = ((t_n - 1).to(interval.dtype) * interval[b]).long()
    extent = torch.maximum(torch.maximum(last_t, h_n - 1), w_n - 1) + 1
    is_last = offset == t_n * h_n * w_n - 1
    contribution = torch.where(vision, torch.where(is_last, extent, 0), 1)
    # Exclusive cumulative sum within each row.
    running = contribution.cumsum(0) - contribution
    row_total = torch.zeros(batch, dtype=torch.long, device=device).index_add_(0, row, contribution)
    cursor = running - (row_total.cumsum(0) - row_total)[row]

    zero = torch.zeros_like(cursor)
    values = torch.stack([cursor + torch.where(vision, t_off, zero),
                          cursor + torch.where(vision, h_off, zero),
                          cursor + torch.where(vision, w_off, zero)])
    positions.view(3, -1)[:, flat] = values
    next_position = torch.zeros(batch, dtype=torch.long, device=device).scatter_reduce(
        0, row, values.amax(dim=0), reduce="amax", include_self=False) + 1
    next_position = torch.where(mask.any(dim=1), next_position, 0)
    return positions, next_position


def _block_grids(kind, starts, image_grid_thw, video_grid_thw, second_per_grid_ts, tokens_per_second, device):
    """(n_blocks, 3) grids and (n_blocks,) time intervals of the vision blocks, in batch order."""
    block_kind = kind[starts]
    n_images, n_videos = int((block_kind == IMAGE).sum()), int((block_kind == VIDEO).sum())
    for name, grids, count in (("image", image_grid_thw, n_images), ("video", video_grid_thw, n_videos)):
        have = 0 if grids is None else grids.shape[0]
        if have != count:
            raise ValueError(f"the batch has {count} {name} blocks but {have} {name} grids")
    grid = torch.zeros((block_kind.numel(), 3), dtype=torch.long, device=device)
    # float32, as upstream multiplies arange by a float32 second_per_grid_ts; exact for ints.
    interval = torch.ones(block_kind.numel(), dtype=torch.float32, device=device)
    if n_images:
        grid[block_kind == IMAGE] = image_grid_thw.to(device).long()
    if n_videos:
        grid[block_kind == VIDEO] = video_grid_thw.to(device).long()
        seconds = (torch.ones(n_videos, dtype=torch.float32, device=device) if second_per_grid_ts is None
                   else second_per_grid_ts.to(device=device, dtype=torch.float32).flatten())
        interval[block_kind == VIDEO] = tokens_per_second * seconds
    return grid, interval


def model_position_ids(config, input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None,
                       second_per_grid_ts=None, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`mrope_position_ids` with the merge size and time scale of a Qwen2.5-VL config."""
    vision = config.vision_config
    return mrope_position_ids(input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, second_per_grid_ts,
                              attention_mask, spatial_merge_size=vision.spatial_merge_size,
                              tokens_per_second=vision.tokens_per_second)
