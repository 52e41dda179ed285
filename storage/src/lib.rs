//! Durable per-object storage on fjall. Depends on no V8 and no other Cinder crate.
