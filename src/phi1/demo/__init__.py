"""`phi1 demo`, `phi1 ablate`, `phi1 report`: the whole recipe composed from the stage commands."""
