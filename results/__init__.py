"""Reading run folders after the fact: ``results.plot`` (``fedlocal-plot``) draws a run's
per-round metrics from the files the ServerApp wrote (``server.results``). Nothing here is
imported by the ServerApp or the ClientApp."""
