# cython: language_level=3
"""jitauth's compiled core: the LMDB binding and the rule matcher.

The two parts are one extension so the matcher can read license records in
place, through the environment's C handle, without a Python call per read.
"""

include "store.pxi"
include "matcher.pxi"
