//! Response streams the host produces after the guest has authorized them:
//! Server-Sent Events for prefix watches, NDJSON for exports, and KV Connect
//! watch frames for Deno clients. They hold no guest instance and end when
//! the client goes away.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::mpsc::Sender;

use crate::backend::{Change, ChangePos, Entry, Kv, ListQuery, Versionstamp};
use crate::limits;

type Tx = Sender<Result<Frame<Bytes>, std::io::Error>>;

async fn send(tx: &Tx, s: String) -> bool {
    tx.send(Ok(Frame::data(Bytes::from(s)))).await.is_ok()
}

/// One JSON line for an entry (export) — also the format `/_import` reads.
/// `key` is the key as text; a key that is not UTF-8 (a Deno key with
/// number or byte parts) also has `key_b64`, its exact bytes. A value that
/// is not plain bytes has `encoding` (`v8`, or `le64` for a counter, whose
/// `value` is its decimal text as REST shows it), so an import restores it
/// exactly.
pub fn entry_json(e: &Entry) -> String {
    let mut line = serde_json::json!({
        "key": String::from_utf8_lossy(&e.key),
        "value": STANDARD.encode(e.value.clone().into_plain()),
        "versionstamp": e.versionstamp.to_string(),
        "expires_at": e.expires_at,
    });
    if std::str::from_utf8(&e.key).is_err() {
        line["key_b64"] = STANDARD.encode(&e.key).into();
    }
    match e.value.encoding {
        crate::backend::Encoding::Bytes => {}
        crate::backend::Encoding::V8 => line["encoding"] = "v8".into(),
        crate::backend::Encoding::Le64 => line["encoding"] = "le64".into(),
    }
    line.to_string()
}

/// The SSE id of a change: `<versionstamp>.<n>` (n = its place inside the
/// commit), so a client that reconnects in the middle of a large commit
/// resumes exactly after the last event it saw.
fn change_event(c: &Change) -> String {
    let data = serde_json::json!({
        "key": String::from_utf8_lossy(&c.key),
        "value": c.value.as_ref().map(|v| STANDARD.encode(v.clone().into_plain())),
        "versionstamp": c.versionstamp.to_string(),
        "expires_at": c.expires_at,
    });
    format!("id: {}.{}\nevent: {}\ndata: {}\n\n", c.versionstamp, c.index, if c.value.is_some() { "set" } else { "delete" }, data)
}

/// Parse a resume position: `<vs>` (after that whole write) or `<vs>.<n>`
/// (an SSE id: after that event).
pub fn parse_position(s: &str) -> Result<ChangePos, String> {
    let (vs, n) = match s.split_once('.') {
        Some((vs, n)) => (vs, Some(n.parse::<u32>().map_err(|_| format!("{s:?} is not a versionstamp or an event id"))?)),
        None => (s, None),
    };
    let vs = vs.parse::<Versionstamp>().map_err(|e| e.to_string())?;
    Ok(ChangePos { vs, index: n })
}

/// Where a new prefix watch starts: the client's position, or "now".
pub fn start_position(store: &Kv, after: Option<&str>) -> Result<ChangePos, String> {
    match after {
        Some(a) => {
            let pos = parse_position(a)?;
            // A position this store never reached was not issued by it (or
            // by the history it was restored from): waiting for it would
            // silently skip every change up to it.
            let committed = store.committed();
            if pos.vs.counter > committed {
                return Err(format!(
                    "{} is beyond the newest commit ({}); this store never issued it",
                    pos.vs,
                    Versionstamp::new(committed, 0)
                ));
            }
            Ok(pos)
        }
        None => Ok(ChangePos { vs: Versionstamp::new(store.committed(), u16::MAX), index: None }),
    }
}

/// Stream every change under `prefix` after `pos` until the client leaves
/// or the server shuts down.
pub async fn watch_prefix(store: Kv, prefix: Vec<u8>, mut pos: ChangePos, tx: Tx) {
    let mut commits = store.subscribe_commits();
    if !send(&tx, format!(": watching prefix {:?}\nretry: 1000\n\n", String::from_utf8_lossy(&prefix))).await {
        return;
    }
    loop {
        commits.borrow_and_update();
        match store.changes(prefix.clone(), pos, limits::WATCH_STREAM_BATCH).await {
            Ok(changes) if !changes.is_empty() => {
                for c in &changes {
                    if !send(&tx, change_event(c)).await {
                        return;
                    }
                    pos = ChangePos { vs: c.versionstamp, index: Some(c.index) };
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = send(&tx, format!("event: error\ndata: {}\n\n", serde_json::json!({ "error": e.to_string() }))).await;
                return;
            }
        }
        tokio::select! {
            r = commits.changed() => if r.is_err() { return; },
            _ = tokio::time::sleep(Duration::from_secs(15)) => {
                if !send(&tx, ": keep-alive\n\n".into()).await { return; }
            }
            _ = tx.closed() => return,
            _ = store.closing() => return,
        }
    }
}

/// Stream every live entry under `prefix` as NDJSON, in key order, page by
/// page (each page is a consistent snapshot; the export as a whole is not).
pub async fn export(store: Kv, prefix: Vec<u8>, tx: Tx) {
    let mut cursor = None;
    loop {
        if store.is_closing() {
            return;
        }
        let q = ListQuery { prefix: prefix.clone(), limit: limits::MAX_LIST_LIMIT, cursor: cursor.take(), ..Default::default() };
        match store.list(q).await {
            Ok(page) => {
                let mut chunk = String::new();
                for e in &page.entries {
                    chunk.push_str(&entry_json(e));
                    chunk.push('\n');
                }
                if !chunk.is_empty() && !send(&tx, chunk).await {
                    return;
                }
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None if prefix.is_empty() => return export_queue(&store, &tx).await,
                    None => return,
                }
            }
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
        }
    }
}

/// One JSON line for a pending queue message (a whole-store export ends
/// with them); `/_import` enqueues it again (a new id, the same due time,
/// the backoff steps it has left).
pub fn queue_json(m: &crate::backend::PendingMessage) -> String {
    let encoding = crate::queue::encoding_name(m.payload.encoding);
    serde_json::json!({
        "queue_message": {
            "id": m.id,
            "value": STANDARD.encode(&m.payload.bytes),
            "encoding": encoding,
            "due_at": m.due_at,
            "attempts": m.attempts,
            "backoff_schedule": m.backoff_schedule,
            "keys_if_undelivered_b64": m.keys_if_undelivered.iter().map(|k| STANDARD.encode(k)).collect::<Vec<_>>(),
        }
    })
    .to_string()
}

/// The pending queue messages of a whole-store export, in id order.
async fn export_queue(store: &Kv, tx: &Tx) {
    let mut after = String::new();
    loop {
        match store.backend().queue_list(after.clone(), limits::MAX_LIST_LIMIT).await {
            Ok(page) => {
                let Some(last) = page.last() else { return };
                after = last.id.clone();
                let mut chunk = String::new();
                for m in &page {
                    chunk.push_str(&queue_json(m));
                    chunk.push('\n');
                }
                if !send(tx, chunk).await {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
        }
    }
}

/// A KV Connect entry for a stored one.
pub fn kv_connect_entry(e: Entry) -> sidekv_kvconnect::datapath::KvEntry {
    use sidekv_kvconnect::datapath::{KvEntry, Value};
    let value = match e.value.encoding {
        crate::backend::Encoding::V8 => Value::V8(e.value.bytes),
        crate::backend::Encoding::Bytes => Value::Bytes(e.value.bytes),
        crate::backend::Encoding::Le64 => match e.value.as_counter() {
            Some(n) => Value::U64(n),
            None => Value::Bytes(e.value.bytes),
        },
    };
    KvEntry::new(e.key, value, e.versionstamp.to_bytes())
}

/// KV Connect v3 watch: a frame with every key at once, then another each
/// time one of them changes (or expires), every key in it again, and an
/// empty frame every 5 s.
/// Deno clients re-watch when the stream ends, so errors just end it.
pub async fn kv_watch(store: Kv, keys: Vec<Vec<u8>>, tx: Tx) {
    use sidekv_kvconnect::datapath::{WatchKeyOutput, WatchOutput};
    let frame = |b: Vec<u8>| Ok(Frame::data(Bytes::from(b)));
    let mut commits = store.subscribe_commits();
    let mut seen: Option<Vec<Option<Versionstamp>>> = None;
    loop {
        commits.borrow_and_update();
        let Ok(current) = store.get_many(keys.clone()).await else { return };
        let now: Vec<Option<Versionstamp>> = current.iter().map(|e| e.as_ref().map(|e| e.versionstamp)).collect();
        let expiry = current.iter().flatten().filter_map(|e| e.expires_at).min();
        if seen.as_ref() != Some(&now) {
            // Every key in every frame, as changed with its current entry:
            // Deno's client reads an unchanged marker as "deleted".
            let outputs = current.into_iter().map(|e| WatchKeyOutput::changed(e.map(kv_connect_entry))).collect();
            if tx.send(frame(sidekv_kvconnect::watch::encode_frame(&WatchOutput::success(outputs)))).await.is_err() {
                return;
            }
            seen = Some(now);
        }
        let until_expiry = expiry.map(|at| Duration::from_millis(at.saturating_sub(crate::backend::now_ms()) + 1));
        let keep_alive = Duration::from_secs(sidekv_kvconnect::watch::KEEPALIVE_INTERVAL_SECS);
        tokio::select! {
            r = commits.changed() => if r.is_err() { return; },
            _ = tokio::time::sleep(until_expiry.unwrap_or(keep_alive).min(keep_alive)) => {
                if until_expiry.is_none_or(|d| d >= keep_alive)
                    && tx.send(frame(sidekv_kvconnect::watch::KEEPALIVE_FRAME.to_vec())).await.is_err()
                {
                    return;
                }
            }
            _ = tx.closed() => return,
            _ = store.closing() => return,
        }
    }
}
