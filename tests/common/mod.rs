//! Test harness shared by the integration tests: spawns the real `sidekv`
//! binary on port 0 (reading the port from its `listening on` line) and a
//! real S3-compatible server (moto from the project's venv, or the endpoint
//! in `SIDEKV_TEST_S3_ENDPOINT`), and a private PostgreSQL (`pg`:
//! `SIDEKV_TEST_BACKEND=postgres` puts `start_temp`'s servers on it).
//! Spawned processes get a clean environment: no stray AWS_* settings are
//! inherited.
//!
//! | module   | what                                                       |
//! |----------|------------------------------------------------------------|
//! | `server` | the sidekv process, its options and an HTTP client for it  |
//! | `s3`     | the S3 server (moto) the backup tests use                  |
//! | `ops`    | writes that report their status, metrics, waiting, wiping  |
//! | `proxy`  | a fault-injecting proxy in front of the S3 server           |
//! | `state`  | a server's whole state, through the API or from its file   |
//! | `lin`    | register workload + linearizability checker (Wing & Gong)  |
//! | `pg`     | a private PostgreSQL, fresh databases, the backend switch   |
//! | `clients`| the real Deno and Node clients, run as child processes     |
//! | `rest`   | REST assertions: committed writes, JSON errors, ETags, …   |
#![allow(dead_code)]
#![allow(unused_imports)] // each test binary uses its own subset

mod clients;
mod lin;
mod ops;
mod pg;
mod proxy;
mod rest;
mod s3;
mod server;
mod state;

pub use clients::*;
pub use lin::*;
pub use ops::*;
pub use pg::*;
pub use proxy::*;
pub use rest::*;
pub use s3::*;
pub use server::*;
pub use state::*;
