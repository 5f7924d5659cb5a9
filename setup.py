"""Build the compiled core of jitauth.

``jitauth._core`` is one Cython extension made of the LMDB binding and the
rule matcher (``ext/core.pyx`` includes the ``.pxi`` parts).  It links the
system liblmdb (Debian: ``liblmdb-dev``), so that every process, and every
part of a process, opens the environment through the same library.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

core = Extension(
    "jitauth._core",
    sources=["ext/core.pyx"],
    libraries=["lmdb"],
    extra_compile_args=["-O2"],
)

setup(
    ext_modules=cythonize(
        [core],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
