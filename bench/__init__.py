"""The jitauth bench: jitauth side by side with other authorization engines.

Run ``python -m bench --help``.  ``bench/README.md`` says what each suite
measures, how the peers are configured and what the latest figures are.
"""
