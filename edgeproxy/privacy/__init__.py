"""Privacy rules: consent, Global Privacy Control, IP handling, bots (pure, no I/O).

The edge applies the verdicts (cookies, drops); the pipeline records why an event was not
delivered. See ``policy.decide`` for the order the rules are applied in.
"""
