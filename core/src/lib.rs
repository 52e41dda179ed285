//! The actor runtime for Durable Objects. Engine-agnostic: never links V8. Depends on `cinder-storage` and `cinder-placement`.
