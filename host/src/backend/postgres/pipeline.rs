//! Point reads over a few shared, pipelined connections.
//!
//! A pooled connection serves one query at a time: a GET waits for its
//! round trip alone, and PostgreSQL wakes up once per query. tokio-postgres
//! pipelines queries issued concurrently on one `Client`, so the point reads
//! of many requests share `PG_PIPELINED_CONNECTIONS` connections: each
//! server process reads and answers them in batches. Only single-statement
//! reads go here (no transactions); everything else uses the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Mutex;
use tokio_postgres::{Client, Statement};

use super::{describe, sql};
use crate::backend::StoreError;

/// A live shared connection and its prepared point read.
struct Conn {
    client: Client,
    get: Statement,
}

pub struct Pipelined {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
}

impl Pipelined {
    pub fn new(config: tokio_postgres::Config, tls: tokio_postgres_rustls::MakeRustlsConnect, n: usize) -> Pipelined {
        Pipelined { config, tls, slots: (0..n.max(1)).map(|_| Mutex::new(None)).collect(), next: AtomicUsize::new(0) }
    }

    /// A connection of the next slot, (re)connecting it if needed.
    async fn conn(&self) -> Result<Arc<Conn>, StoreError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(|e| super::writer::unreachable(&describe(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a pipelined PostgreSQL connection ended");
            }
        });
        let get = client.prepare(&sql::GET).await.map_err(|e| super::store_error(&e))?;
        let c = Arc::new(Conn { client, get });
        *guard = Some(c.clone());
        Ok(c)
    }

    /// One key's row, live now.
    pub async fn get(&self, key: &[u8]) -> Result<Option<tokio_postgres::Row>, StoreError> {
        // A broken connection reports `is_closed`: the next call on its slot reconnects.
        let c = self.conn().await?;
        c.client.query_opt(&c.get, &[&key]).await.map_err(|e| super::store_error(&e))
    }
}
