"""Test configuration: float64, and JAX's strict rank and dtype promotion (as diffrax's suite does).

Every test states its precision and where its tolerance comes from.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
