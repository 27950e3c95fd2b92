"""Moved to ``deploy.launch`` (``python -m deploy.launch``). This alias keeps the imports in
``bench/`` working until they name the new place; delete it then."""

import sys

from deploy import launch

if __name__ == "__main__":
    sys.exit(launch.main())
sys.modules[__name__] = launch
