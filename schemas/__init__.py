"""Wire contracts of the router: tickets in, routing decisions out, dead letters, taxonomy.

Imports nothing from worker/, loadgen/ or expert/.
"""
