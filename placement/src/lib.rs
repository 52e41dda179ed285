//! Which node and executor thread own an object id. Depends on no other Cinder crate.
