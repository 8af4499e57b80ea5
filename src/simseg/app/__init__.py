"""The applications built on the simseg library: the ``simseg`` command line (:mod:`simseg.app.cli`), one module per
command with its arguments, progress and report files, the demo and the web server.

The library (``simseg.*``) never imports this package.
"""
