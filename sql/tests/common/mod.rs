//! Helpers shared by the integration tests: a real fjall store in a temp dir.
#![allow(dead_code)]

use std::sync::Arc;

use cinder_sql::{SqlConfig, SqlStorage};
use cinder_storage::{Durability, ObjectId, Store, StoreConfig};

pub fn store(dir: &std::path::Path, durability: Durability) -> Arc<Store> {
    Store::open(
        dir,
        StoreConfig {
            durability,
            cache_bytes: 8 << 20,
        },
    )
    .expect("open store")
}

pub fn id(n: u64) -> ObjectId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id
}

pub fn open(store: &Arc<Store>, n: u64) -> SqlStorage {
    SqlStorage::open(store.object(id(n)), SqlConfig::default()).expect("open sql")
}

/// Ends the turn and waits until it is durable.
pub fn commit(db: &SqlStorage) {
    if let Some(c) = db.flush().expect("flush") {
        c.wait().expect("durable");
    }
}
