"""``patchcore-rt serve``: the runtime behind HTTP (the ``[serve]`` extra).

The line's controller posts an image and gets the record ``predict`` prints; the operator uses a
page served by the same process (review queue, mark good, teach, switch); the plant's monitoring
scrapes ``/metrics``. Modules: :mod:`.options` (settings and the safety rules), :mod:`.batcher`
(concurrent requests into one model call), :mod:`.results` (recent results by server-issued id),
:mod:`.operator` (mark, teach, switch), :mod:`.metrics`, :mod:`.app` (routes), :mod:`.server`
(uvicorn and the in-process watcher). Only :mod:`.app`, :mod:`.metrics` and :mod:`.server`
import the extra's packages.
"""
