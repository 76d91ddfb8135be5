"""pyro_spvae.nn"""
