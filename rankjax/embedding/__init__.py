"""Sharded embedding tables: table configs and pooling (`tables`), the engine (`engine`), the fused
sparse optimizers (`optimizers`), the planner (`planner`), id hashing and quotient-remainder
tables (`hashing`), and the engine's construction from config (`builder`)."""
