"""Simulated fleets of real agents, for the demo, the tests and capacity planning.

- ``Fleet``: N real agents in one process, each with its own MQTT connection, state
  directory and SQLite buffer; optionally each behind a cuttable ``LinkProxy``.
- ``MosquittoProcess``: a real Mosquitto broker on a free port (start/kill/restart).
- ``LinkProxy``: a TCP relay whose link can be cut and restored.
- ``run_demo``: the ``edgefleet demo`` loop.
- ``simulate.run_simulation``: ``edgefleet simulate``, hundreds to thousands of real agents
  in shard processes through a scenario of faults (``scenario``), with a report
  (``report``); see docs/simulations.md.

It imports the agent and the controller; nothing in the product imports it except the
CLI's ``demo`` and ``simulate`` commands.
"""
