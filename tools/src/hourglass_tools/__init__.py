"""Hourglass's server tools: ``bench`` (``hourglass bench``) and ``chaos`` (``hourglass chaos``).

A distribution of their own (``hourglass-tools``, in ``tools/``), brought by the
``server`` extra: a producer's ``pip install hourglass`` does not carry them.
They import ``hourglass``; ``hourglass`` never imports them (its command line
finds them through the ``hourglass.commands`` entry points).
"""
