"""pyro_spvae.spn"""
