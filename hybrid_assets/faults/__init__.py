"""Fault experiments: steady state, inject, observe, verify the steady state came back.

``journal`` accounts for every request; ``resources`` snapshots what the runtime holds;
``injectors`` are the faults (through the protocol and from outside); ``experiment`` runs
the four steps and reports detection and recovery times, lost requests and leaks.
"""
