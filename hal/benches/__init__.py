"""Example bench files (package data): sim_alice, sim_bob, sim_link, lab_alice, lab_bob."""
