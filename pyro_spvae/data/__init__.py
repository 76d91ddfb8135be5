"""pyro_spvae.data"""
