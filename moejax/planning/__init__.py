"""Pod plans: will a run fit on a TPU slice, with which mesh, how fast, moving how many bytes.

chips.py (chip table, topologies, libtpu), plan.py (compile one run ahead of time), sweep.py
(smallest fitting slice per run of a sweep), hlo_comm.py and comm_model.py (collective bytes
measured from HLO and counted analytically). Entry points: experiments/plan.py,
benchmarks/comm.py. docs/planning.md has the details and measured figures.
"""
