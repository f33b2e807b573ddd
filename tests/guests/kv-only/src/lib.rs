//! Test fixture: uses only `wasi:keyvalue` for storage. Routes (bucket from
//! `?bucket=`, default "default"): `GET /{k}`, `POST /{k}`, `DELETE /{k}`,
//! `POST /incr/{k}` (increment by the decimal body), `GET /` (all keys, via
//! list-keys pages), `POST /batch` (body `k=v;k=v`: set-many),
//! `GET /many/{k,k}` (get-many), `GET /exists/{k}`.

wit_bindgen::generate!({ path: "../../../wit", world: "keyvalue-guest", generate_all });

use exports::sidekv::store::handler::{Guest, Request, Response};
use wasi::keyvalue::{atomics, batch, store};

struct Component;
export!(Component);

fn resp(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response { status, headers: vec![], body: body.into(), stream: None }
}

fn run(req: &Request) -> Result<Response, store::Error> {
    let (path, query) = req.path_with_query.split_once('?').unwrap_or((&req.path_with_query, ""));
    let bucket_name = query.strip_prefix("bucket=").unwrap_or("default");
    let b = store::open(bucket_name)?;
    let p = path.trim_start_matches('/');
    Ok(match (req.method.as_str(), p) {
        ("GET", "") => {
            let mut all = Vec::new();
            let mut cursor = None;
            loop {
                let r = b.list_keys(cursor)?;
                all.extend(r.keys);
                match r.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            resp(200, all.join(","))
        }
        ("POST", "batch") => {
            let kvs: Vec<(String, Vec<u8>)> = std::str::from_utf8(&req.body)
                .unwrap_or("")
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            batch::set_many(&b, &kvs)?;
            resp(200, "ok")
        }
        ("GET", p) if p.starts_with("many/") => {
            let keys: Vec<String> = p["many/".len()..].split(',').map(str::to_string).collect();
            let got = batch::get_many(&b, &keys)?;
            let parts: Vec<String> = got
                .into_iter()
                .map(|e| match e {
                    Some((k, v)) => format!("{k}={}", String::from_utf8_lossy(&v)),
                    None => "-".into(),
                })
                .collect();
            resp(200, parts.join(","))
        }
        ("GET", p) if p.starts_with("exists/") => resp(200, b.exists(&p["exists/".len()..])?.to_string()),
        ("POST", p) if p.starts_with("incr/") => {
            let delta: u64 = std::str::from_utf8(&req.body).ok().and_then(|s| s.parse().ok()).unwrap_or(1);
            resp(200, atomics::increment(&b, &p["incr/".len()..], delta)?.to_string())
        }
        ("GET", k) => match b.get(k)? {
            Some(v) => resp(200, v),
            None => resp(404, "not found"),
        },
        ("POST", k) => {
            b.set(k, &req.body)?;
            resp(200, "ok")
        }
        ("DELETE", k) => {
            b.delete(k)?;
            resp(200, "ok")
        }
        _ => resp(405, "no"),
    })
}

impl Guest for Component {
    fn handle(req: Request) -> Response {
        run(&req).unwrap_or_else(|e| match e {
            store::Error::NoSuchStore => resp(404, "no such store"),
            store::Error::AccessDenied => resp(403, "access denied"),
            store::Error::Other(m) => resp(500, m),
        })
    }
}
