"""Parents of a fine-tune: the model a training starts from, resolved into one folder, and its record.

- ``record``: ``parent.json`` and the folder's file names, written by resolve-parent and read by every other stage;
- ``resolve``: ``train.init_from`` (a registered version, a file, an NVlabs folder) made into that folder;
- ``reference_import``: NVlabs/SPADE checkpoints read and converted (``import-reference`` and a reference parent).
"""
