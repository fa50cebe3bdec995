"""What the sampler node tells the web extension while it streams (``web/omniforcing.js``).

Custom websocket events, sent to the client that queued the prompt with
``PromptServer.instance.send_sync(event, payload, client_id)``. Files live in ComfyUI's
temp folder and are fetched with ``/view?filename=...&subfolder=...&type=temp``.

``omniforcing.start``  {node, prompt_id, blocks, fps, sample_rate, width, height, seconds}
    Sent once before block 0. ``blocks`` is None for a stream without an end.
``omniforcing.block``  {node, prompt_id, index, blocks, time: [t0, t1], fps, sample_rate,
                        frames: [file], audio: file, samples, block_s}
    One per finished block, in order: its frames (JPEG, one file each) and its sound
    (one WAV), ready to play back to back: block k's audio starts where k-1's ended.
    ``block_s`` is the wall time the block took to generate and decode.
``omniforcing.end``    {node, prompt_id, blocks_done, interrupted, error}
    Sent once when the stream stops: finished, interrupted by the user, or failed
    (``error`` holds the message, else None). ``blocks_done`` equals the block events sent.

``file`` is ``{"filename": str, "subfolder": str, "type": "temp"}``. ``node`` is the
executing node's id (for a node inside a subgraph, the ``"outer:inner"`` id path).
The node's final UI output repeats the whole stream for replay after the run:
``{"omniforcing": [{"frames": [file], "audio": file, "fps": 24}]}``.
"""

START = "omniforcing.start"
BLOCK = "omniforcing.block"
END = "omniforcing.end"
