"""Steps and helpers the tests send to workers, in an installed package so every worker imports them by
name: ``cache`` (calls counted in files), ``cancel`` (heartbeats that only a cancel stops), ``provider``
(a model client at its provider's limits), ``intervals`` (concurrency observed from call intervals)."""
