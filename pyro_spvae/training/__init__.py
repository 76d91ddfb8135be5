"""pyro_spvae.training"""
