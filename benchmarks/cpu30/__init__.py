"""The parts of ``benchmarks/cifar10_cpu30.py``: the planner (``jobs``), the cross-machine
carrying (``carry``), what a finished run keeps (``results``) and the report (``report``)."""
