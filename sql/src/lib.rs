//! SQLite whose pages live in fjall. Depends on `cinder-storage`; never links V8.
