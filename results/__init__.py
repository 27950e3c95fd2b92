"""What a run records and how to read it: ``results.metrics`` names every metric once (the
client's reply, the server's round metrics, ``metrics.jsonl``, the plots all use it; plain
strings, imported by both apps), and ``results.plot`` (``fedlocal-plot``) draws a run's
per-round metrics from the files the ServerApp wrote (``server.results``) after the fact."""
