# The compiled matcher; see matcher notes in jitauth/reference.py.
