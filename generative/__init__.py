"""Score-based generative modelling: score matching, SMLD/NCSN, score SDEs,
predictor-corrector and probability-flow samplers, exact likelihood."""
