"""sim_hw package."""
