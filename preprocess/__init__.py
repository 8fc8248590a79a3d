"""The annotation-free data engine: SpatialVID clips -> DIFT and 4DRL training JSONL.

Steps (`python -m preprocess <step> --help`; `preprocess/run.sh IN OUT SAM3` runs them all in order):

    frames      SpatialVID indexes.txt -> clips/<id>/frames/frame_%04d.jpg + clip.json (real times)
    objects     an OpenAI-compatible LLM names one moving and one static object -> objects.json
    masks       SAM3 (transformers' Sam3 classes) per object -> masks_dynamic/, masks_static/, masked_frames/
    camera_qa   camera-motion multiple choice + chain of thought -> camera_qa.json
    object_qa   object-motion multiple choice + chain of thought -> object_qa.json
    merge       per-clip files -> qa/camera_qa.jsonl, qa/object_qa.jsonl, qa/qa_all.jsonl, clips.jsonl, stats
    convert     qa/qa_all.jsonl -> DIFT records (dift_data.jsonl) and RL records (rl_data.jsonl)
    check       drops records whose <output_image> count, tags or images are wrong

One folder layout, end to end (OUT is the output root; every path stored in a record is relative:
QA records to OUT, DIFT/RL records to the folder of their own JSONL file):

    OUT/
      clips/<video_id>/
        clip.json                      frames: group, source video, fps, frames (file, seq, source index,
                                       time in s), camera segments, scene summary
        frames/frame_%04d.jpg          frames: the annotated frames, numbered 0..N-1 in indexes.txt order
        objects.json                   objects: {"dynamic_object", "static_object"} (null = none)
        masks.json                     masks: per object its label and per-frame best score
        masks_dynamic/frame_%04d.npy   masks: uint8 0/255, frame size (only frames with a mask)
        masks_static/frame_%04d.npy
        masked_frames/frame_%04d.jpg   masks: frame + dynamic mask on red, static mask on blue
        masked_static_overlays/seg_{a}_to_{b}_f{frame:04d}.jpg    camera_qa helper images
        masked_dynamic_overlays/dyn_f{frame:04d}.jpg              object_qa helper images
        camera_qa.json, object_qa.json camera_qa / object_qa: the clip's QA items (a JSON list)
      state/<step>/completed.txt       append-only ids of finished clips (resume skips them)
      state/<step>/failed.jsonl        append-only {"clip_id", "reason"} of failed clips
      state/<step>/summary.json        counts of the last run
      state/<step>/replies/<id>.jsonl  LLM replies an unfinished clip received (replayed when it is redone)
      qa/camera_qa.jsonl, qa/object_qa.jsonl, qa/qa_all.jsonl, qa/merge_stats.json, clips.jsonl
      dift_data.unchecked.jsonl, rl_data.unchecked.jsonl   convert
      dift_data.jsonl, rl_data.jsonl                       check (what training reads)

Shared plumbing: `arguments` (every step's flags, light enough for a fast --help), `runner` (the
resumable per-clip loop, Ctrl-C, the run's verdict), `layout` (paths, atomic writes), `records` (checked
readers of the engine's own files), `llm` (the client, retries, the reply cache), `redact` (the API
key kept out of files and streams).

`dift.core.frames` (owned separately) holds the frame-decoding and sizing rules the training,
evaluation and RL stages share.
"""
