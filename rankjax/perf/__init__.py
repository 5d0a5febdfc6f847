"""Performance tooling: step timing (`bench`), profiling with XLA's cost analysis and traces
(`profiling`), hardware peaks and the roofline (`roofline`), HLO collective statistics
(`hlo_stats`) and the embedding plan report (`plan_report`)."""
