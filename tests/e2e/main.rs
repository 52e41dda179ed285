//! End-to-end tests: start the real `cinder` binary and talk to it with real clients.
//!
//! Each module covers one topic; worker projects live in `tests/fixtures/`. The servers bind
//! port 0 and report the address on their "Ready on" line, so tests run in parallel.

mod harness;

mod browser;
mod cache;
mod chat;
mod cli;
mod config;
mod d1;
mod durable;
mod globals;
mod hono;
mod htmlrewriter;
mod kv;
mod lifecycle;
mod limits;
mod ops;
mod outbound;
mod portable;
mod queues;
mod r2;
mod ratelimit;
mod rules;
mod scheduled;
mod serve;
mod services;
mod sql;
mod streaming;
mod websocket;
