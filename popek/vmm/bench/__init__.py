"""The benchmark study (`popek bench`): popek's monitors measured against the bare machine and the papers.

``workloads`` says what runs (nanobenchmarks in guests/bench/nano.s, macrobenchmarks on the bundled guests),
``measure`` how (calibrated lengths, interleaved repetitions, median and spread), ``report`` and ``plots``
turn the JSON into markdown and PNGs, and ``study`` ties them together with a progress bar.
"""
