"""idclab: image difference captioning and composed image retrieval on open_clip.

The library behind the idclab book. See DESIGN.md in the project's shared notes for the layout:
``backbones`` (the only module that touches open_clip), ``losses``, ``data`` (the Shapes toy world and the real
datasets), ``models`` (one file per paper), ``metrics``, ``train`` and the ``idclab`` command (``cli``).
"""

from idclab.project import VERSION as __version__  # the one place for the version: idclab/project.py
