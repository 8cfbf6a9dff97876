//! Unit tests of the VAE.
