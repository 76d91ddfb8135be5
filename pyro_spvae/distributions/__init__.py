"""pyro_spvae.distributions"""
