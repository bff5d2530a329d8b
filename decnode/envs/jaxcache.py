"""JAX's persistent compilation cache, on by default for every env that compiles with JAX (SMAX)."""

from __future__ import annotations

import os
from pathlib import Path


def persistent_compile_cache(jax) -> None:
    """XLA compiles each map's reset/step for 15-25 s per process and per B; JAX's on-disk cache (keyed by the program,
    the flags and the jaxlib) lets every later start load them (a 5m_vs_6m run of one iteration: 37 s → 14 s here).
    Kept beside torch's extensions in ~/.cache (XDG_CACHE_HOME), at most 1 GiB; a bound is also what turns on JAX's
    file lock, so that processes sharing the cache never read an entry another is writing. JAX's own variables
    (JAX_COMPILATION_CACHE_DIR, empty to turn it off; JAX_COMPILATION_CACHE_MAX_SIZE; ...) take precedence."""
    defaults = {"jax_compilation_cache_dir": str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                                 / "decnode" / "jax"),
                "jax_compilation_cache_max_size": 2**30,
                "jax_persistent_cache_min_compile_time_secs": 0.5}
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        try:  # a home that cannot be written (read-only, missing) only loses the cache: JAX would warn per program
            Path(defaults["jax_compilation_cache_dir"]).mkdir(parents=True, exist_ok=True)
            if not os.access(defaults["jax_compilation_cache_dir"], os.W_OK):
                return
        except OSError:
            return
    for option, value in defaults.items():
        if option.upper() not in os.environ:
            jax.config.update(option, value)
