//! A server's whole state: through the list API, or read from its file.

use std::path::Path;
use std::time::Duration;

use super::server::*;

/// Key → (value, versionstamp): a server's whole state.
pub type State = std::collections::BTreeMap<String, (Vec<u8>, String)>;

/// Every live entry, through the list API (following cursors).
pub async fn dump(c: &Client) -> State {
    dump_as(c, SECRET).await
}

/// `dump` with another secret (a server started with its own).
pub async fn dump_as(c: &Client, secret: &str) -> State {
    use base64::Engine as _;
    let mut out = State::new();
    let mut cursor = String::new();
    loop {
        let query = [("limit", "1000"), ("cursor", cursor.as_str())];
        let r = c.http.get(c.url("/")).header("authorization", secret).query(&query).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        for e in v["entries"].as_array().unwrap() {
            let value = base64::engine::general_purpose::STANDARD.decode(e["value"].as_str().unwrap()).unwrap();
            out.insert(e["key"].as_str().unwrap().to_string(), (value, e["versionstamp"].as_str().unwrap().to_string()));
        }
        match v["cursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = c.to_string(),
            _ => break,
        }
    }
    out
}

/// GET one key: (value, versionstamp from the ETag).
pub async fn get_vs(c: &Client, key: &str) -> Option<(Vec<u8>, String)> {
    let r = c.req(reqwest::Method::GET, &format!("/{key}")).send().await.unwrap();
    match r.status().as_u16() {
        200 => {
            let etag = r.headers().get("etag").expect("ETag").to_str().unwrap().trim_matches('"').to_string();
            Some((r.bytes().await.unwrap().to_vec(), etag))
        }
        404 => None,
        s => panic!("GET /{key}: {s} {}", r.text().await.unwrap()),
    }
}

/// Every entry of a database file, read directly (after an integrity check).
pub fn read_db(path: &Path) -> State {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "integrity_check of {}", path.display());
    let mut s = c.prepare("SELECT CAST(key AS TEXT), value, version FROM kv ORDER BY key").unwrap();
    s.query_map([], |r| {
        let v = r.get::<_, i64>(2)? as u64;
        Ok((r.get::<_, String>(0)?, (r.get::<_, Vec<u8>>(1)?, format!("{:016x}{:04x}", v >> 16, v & 0xffff))))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}
