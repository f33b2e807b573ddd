//! `wasi:keyvalue` (0.2.0-draft: store, atomics, batch) on sidekv's store,
//! so guests written for other wasi:keyvalue hosts keep working.
//!
//! A bucket is a key prefix: `open("")` or `open("default")` is the whole
//! keyspace, `open("name")` the keys under `name/`. Writes go through the
//! same writer (group commit, versionstamps, changelog, S3 backup) as `kv`.
//! `increment` is an atomic `sum`; the batch calls are single atomic commits,
//! which is stronger than the draft requires. `list-keys` pages in key order
//! with the number of keys already returned as the cursor.

use wasmtime::component::Resource;

use super::HostState;
use super::wasi::keyvalue::{atomics, batch, store};
use crate::backend::{Check, Key, ListQuery, Mutation, MutationKind, StoreError, Value, WriteOp, WriteResult};
use crate::limits;

use store::{Error, KeyResponse};

/// The host side of a `bucket` resource.
pub struct Bucket {
    prefix: String,
}

fn err(e: StoreError) -> Error {
    Error::Other(e.to_string())
}

impl HostState {
    fn bucket(&self, b: &Resource<Bucket>) -> Result<&Bucket, Error> {
        self.table.get(b).map_err(|e| Error::Other(format!("bad bucket handle: {e}")))
    }

    fn full_key(&self, b: &Resource<Bucket>, key: &str) -> Result<Key, Error> {
        Ok(format!("{}{key}", self.bucket(b)?.prefix).into_bytes())
    }

    async fn commit(&mut self, mutations: Vec<Mutation>) -> Result<(), Error> {
        if mutations.is_empty() {
            return Ok(());
        }
        match store_call_off_deadline!(self, self.store.write(WriteOp::Atomic { checks: vec![], mutations })).map_err(err)? {
            WriteResult::Committed { .. } => Ok(()),
            other => Err(Error::Other(format!("unexpected outcome {other:?}"))),
        }
    }
}

impl store::Host for HostState {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, Error> {
        let prefix = match identifier.as_str() {
            "" | "default" => String::new(),
            id if id.contains('/') => return Err(Error::NoSuchStore),
            id => format!("{id}/"),
        };
        self.table.push(Bucket { prefix }).map_err(|e| Error::Other(e.to_string()))
    }
}

impl store::HostBucket for HostState {
    async fn get(&mut self, b: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, Error> {
        let k = self.full_key(&b, &key)?;
        Ok(store_call_off_deadline!(self, self.store.get(k)).map_err(err)?.map(|e| e.value.into_plain()))
    }

    async fn set(&mut self, b: Resource<Bucket>, key: String, value: Vec<u8>) -> Result<(), Error> {
        let key = self.full_key(&b, &key)?;
        self.commit(vec![Mutation { key, kind: MutationKind::Set(Value::bytes(value)), ttl_ms: None }]).await
    }

    async fn delete(&mut self, b: Resource<Bucket>, key: String) -> Result<(), Error> {
        let key = self.full_key(&b, &key)?;
        self.commit(vec![Mutation { key, kind: MutationKind::Delete, ttl_ms: None }]).await
    }

    async fn exists(&mut self, b: Resource<Bucket>, key: String) -> Result<bool, Error> {
        let k = self.full_key(&b, &key)?;
        Ok(store_call_off_deadline!(self, self.store.get(k)).map_err(err)?.is_some())
    }

    async fn list_keys(&mut self, b: Resource<Bucket>, cursor: Option<u64>) -> Result<KeyResponse, Error> {
        let prefix = self.bucket(&b)?.prefix.clone();
        // The draft's cursor is a number: the count of keys already returned.
        // Walk pages of at most MAX_LIST_LIMIT to reach it.
        let mut skip = cursor.unwrap_or(0);
        let mut page_cursor = None;
        loop {
            let q = ListQuery {
                prefix: prefix.clone().into_bytes(),
                limit: limits::MAX_LIST_LIMIT,
                cursor: page_cursor.take(),
                keys_only: true,
                ..Default::default()
            };
            let page = store_call_off_deadline!(self, self.store.list(q)).map_err(err)?;
            let n = page.entries.len() as u64;
            if skip >= n && page.cursor.is_some() {
                skip -= n;
                page_cursor = page.cursor;
                continue;
            }
            let keys: Vec<String> =
                page.entries.into_iter().skip(skip as usize).map(|e| super::host_kv::key_string(e.key[prefix.len()..].to_vec())).collect();
            let next = page.cursor.map(|_| cursor.unwrap_or(0) + keys.len() as u64);
            return Ok(KeyResponse { keys, cursor: next });
        }
    }

    async fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for HostState {
    /// Compare-and-set loop, so the returned value is exactly this
    /// increment's result even under concurrent increments.
    async fn increment(&mut self, b: Resource<Bucket>, key: String, delta: u64) -> Result<u64, Error> {
        let key = self.full_key(&b, &key)?;
        for _ in 0..limits::MAX_CAS_RETRIES {
            let cur = store_call_off_deadline!(self, self.store.get(key.clone())).map_err(err)?;
            let (old, vs) = match &cur {
                None => (0u64, None),
                Some(e) => {
                    let n = e.value.as_counter();
                    let shown = String::from_utf8_lossy(&key);
                    (n.ok_or_else(|| Error::Other(format!("key {shown:?} does not hold a u64 counter")))?, Some(e.versionstamp))
                }
            };
            let new = old.wrapping_add(delta);
            let op = WriteOp::Atomic {
                checks: vec![Check { key: key.clone(), versionstamp: vs }],
                mutations: vec![Mutation { key: key.clone(), kind: MutationKind::Set(Value::u64(new)), ttl_ms: None }],
            };
            match store_call_off_deadline!(self, self.store.write(op)).map_err(err)? {
                WriteResult::Committed { .. } => return Ok(new),
                _ => continue,
            }
        }
        Err(Error::Other("increment lost the race too many times; retry".into()))
    }
}

impl batch::Host for HostState {
    async fn get_many(&mut self, b: Resource<Bucket>, keys: Vec<String>) -> Result<Vec<Option<(String, Vec<u8>)>>, Error> {
        let full = keys.iter().map(|k| self.full_key(&b, k)).collect::<Result<Vec<_>, _>>()?;
        let got = store_call_off_deadline!(self, self.store.get_many(full)).map_err(err)?;
        Ok(keys.into_iter().zip(got).map(|(k, e)| e.map(|e| (k, e.value.into_plain()))).collect())
    }

    async fn set_many(&mut self, b: Resource<Bucket>, key_values: Vec<(String, Vec<u8>)>) -> Result<(), Error> {
        let mut m = Vec::with_capacity(key_values.len());
        for (k, v) in key_values {
            m.push(Mutation { key: self.full_key(&b, &k)?, kind: MutationKind::Set(Value::bytes(v)), ttl_ms: None });
        }
        for chunk in m.chunks(limits::MAX_ATOMIC_MUTATIONS) {
            self.commit(chunk.to_vec()).await?;
        }
        Ok(())
    }

    async fn delete_many(&mut self, b: Resource<Bucket>, keys: Vec<String>) -> Result<(), Error> {
        let mut m = Vec::with_capacity(keys.len());
        for k in keys {
            m.push(Mutation { key: self.full_key(&b, &k)?, kind: MutationKind::Delete, ttl_ms: None });
        }
        for chunk in m.chunks(limits::MAX_ATOMIC_MUTATIONS) {
            self.commit(chunk.to_vec()).await?;
        }
        Ok(())
    }
}
