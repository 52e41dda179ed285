//! The V8 side: isolates per worker script, Web APIs, `env` bindings, limits.
