"""Data sets as numpy arrays, read by modula's own loaders (the ones ``modula data info``
and training use), so a file the command line refuses raises the same message here as
:class:`modula.DataError`."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

from modula import _native

__all__ = ["load"]


def load(
    target: Union[str, "os.PathLike[str]"],
    format: Optional[str] = None,
    data_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
) -> Dict[str, Any]:
    """Loads a data set and returns a dict of numpy arrays.

    ``target`` is a data set name (``"ptb"``, ``"fashion-mnist"``, ``"mnist-10k"``,
    ``"cifar10"``; fetched beforehand with ``modula data fetch NAME``) looked up in
    ``data_dir`` (default ``$MODULA_DATA``, else ``./data``), or a file or directory.
    ``format`` (``ptb``, ``text``, ``idx``, ``cifar10``, ``mnist-json``) is guessed when
    omitted.

    Every result has ``name``, ``path`` and ``format``, and:

    - text (ptb, text): ``vocab`` (a list of words; id ``i`` is ``vocab[i]``) and
      ``train``, ``valid``, ``test``: uint32 token ids;
    - images (idx directories, cifar10, mnist-json): ``classes`` (names) and ``train``,
      ``test`` (None when the source has no test split): tuples ``(images, labels)`` of
      uint8 ``[n, height, width, channels]`` and uint8 ``[n]``;
    - a single IDX file: ``array``, uint8 of the file's dimensions.

    The arrays take over the loader's buffers: nothing is copied after loading.
    """
    return _native.load(
        os.fspath(target),
        format=format,
        data_dir=None if data_dir is None else os.fspath(data_dir),
    )
