"""pyro_spvae.infer"""
