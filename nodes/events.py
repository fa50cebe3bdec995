"""What the sampler node tells the web extension while it streams (``web/omniforcing.js``).

Custom websocket events, sent to the client that queued the prompt with
``PromptServer.instance.send_sync(event, payload, client_id)``. Files live in ComfyUI's
temp folder, in the stream's ``subfolder``, and are fetched with
``/view?filename=...&subfolder=...&type=temp``.

``omniforcing.start``  {node, prompt_id, blocks, fps, sample_rate, width, height, seconds}
    Sent once before block 0. ``blocks`` is None for a stream without an end.
``omniforcing.block``  {node, prompt_id, index, blocks, time: [t0, t1], fps, sample_rate,
                        subfolder, cell: [w, h], block_s, frames, sheet, columns, audio, samples}
    One per finished block, in order, as two files: ``sheet``, a JPEG of the block's
    ``frames`` frames left to right and row by row, ``columns`` across, each ``cell`` pixels
    (None when a decode look-ahead holds all of them back), and ``audio``, a WAV of its
    ``samples`` samples, ready to play back to back: block k's audio starts where k-1's
    ended. ``block_s`` is the wall time the block took to generate and decode.
``omniforcing.end``    {node, prompt_id, blocks_done, interrupted, error, replay}
    Sent once when the stream stops: finished, interrupted by the user, or failed
    (``error`` holds the message, else None). ``blocks_done`` equals the block events sent.
    ``replay`` (None when the stream finished) holds the blocks shown, for the player to
    replay: ComfyUI passes no output on from an interrupted or failed node.

``node`` is the executing node's id (for a node inside a subgraph, the ``"outer:inner"`` id
path). A replay is ``{subfolder, cell, fps, sample_rate, seconds, blocks: [{frames, sheet,
columns, audio, samples}]}``: one entry per block, never one per frame, since ComfyUI keeps
the node's UI output in its history. The node's final UI output is
``{"omniforcing": [replay + {stream_audio: file}]}``, where ``file`` is ``{"filename": str,
"subfolder": str, "type": "temp"}``: the whole sound as one WAV for the audio widget.
"""

START = "omniforcing.start"
BLOCK = "omniforcing.block"
END = "omniforcing.end"
