"""The bench suites; each module offers ``run``, ``markdown`` and ``plot``.

``run(config, progress, tools)`` returns a JSON-ready dict with every
figure and the reasons for whatever it skipped; ``markdown(result)``
renders its tables; ``plot(result, out_dir, stem)`` writes PNG files and
returns their paths.
"""

NAMES = ("matcher", "grpc", "batch", "scale")
