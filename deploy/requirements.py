"""Print the dependencies of a pyproject.toml, one per line (what `pip install -r` reads).

Used by the Dockerfile (to install them in a layer of their own, cached until they change)
and by deploy/base-image.sh (to pre-install them in a local base image)::

    python deploy/requirements.py pyproject.toml > requirements.txt
"""

import sys
import tomllib


def dependencies(pyproject: str) -> list[str]:
    with open(pyproject, "rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


if __name__ == "__main__":
    print("\n".join(dependencies(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")))
