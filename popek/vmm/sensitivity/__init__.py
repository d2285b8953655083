"""Which instructions of a profile are sensitive, found by executing them: the classification the Popek-Goldberg
checker decides its theorems from and the rewriting monitor rewrites by.

``forms`` runs each instruction form on chosen machine states, ``model`` states what the trap-and-emulate and
hybrid monitors give the real processor, ``classify`` puts the two together.  Nothing here runs a guest, so
the monitors may import it; the checker (``popek.vmm.checker``), which runs witnesses on the host, sits above.
"""
