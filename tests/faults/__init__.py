"""The fault battery (issue 14): faults injected into the real app on the CPU under steady load.

Each case module (kills.py, traffic.py) starts the instances it needs, injects its faults, and
returns one FaultResult per fault; `python -m tests.faults` (make faults) runs them all and prints
the table. The quicker cases also run as e2e tests in make test (tests/e2e/test_faults_*.py).
"""
