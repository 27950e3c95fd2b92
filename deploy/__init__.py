"""Running fedlocal on machines: ``deploy.launch`` starts a SuperLink and SuperNodes (or a
simulation SuperLink) on this machine and runs the app against them; the scripts beside it
serve docker-compose (``certs.sh``, ``register_supernodes.py``, ``compose_nodes.py``,
``requirements.py``, ``base-image.sh``). Not part of the Flower app bundle (pyproject's
``fab-exclude``): the ServerApp and ClientApp import nothing from here."""
