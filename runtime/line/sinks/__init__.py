"""Result sinks: where each result record goes besides the JSON lines (``--publish URL``).

One small module per URL scheme behind one table (:mod:`.table`); :mod:`.delivery` puts an
on-disk outbox and a sender thread in front of each sink, so scoring never waits on the line's
systems and nothing is lost while one of them is away.
"""
