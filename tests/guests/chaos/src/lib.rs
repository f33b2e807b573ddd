//! Test fixture guest. `GET /loop` spins forever, `/alloc` allocates
//! without bound, `/trap` panics, `/huge` returns a 40 MiB body,
//! `/badstatus` returns status 42, `/badheader` an invalid header name,
//! `/sleep` busy-waits 200 ms. Any other path: `GET /{key}` reads the key
//! through kv (200 with the value or 404), `POST /{key}` writes the body.

wit_bindgen::generate!({ path: "../../../wit", world: "guest" });

use exports::sidekv::store::handler::{Guest, Request, Response};
use sidekv::store::kv;

struct Component;
export!(Component);

fn resp(status: u16, body: Vec<u8>) -> Response {
    Response { status, headers: vec![], body, stream: None }
}

impl Guest for Component {
    fn handle(req: Request) -> Response {
        match req.path_with_query.as_str() {
            "/loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mut v: Vec<Vec<u8>> = Vec::new();
                loop {
                    v.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&v);
                }
            }
            "/trap" => panic!("chaos guest: asked to trap"),
            "/huge" => resp(200, vec![b'x'; 40 << 20]),
            "/badstatus" => resp(42, vec![]),
            "/badheader" => Response { status: 200, headers: vec![("bad header\n".into(), b"x".to_vec())], body: vec![], stream: None },
            "/sleep" => {
                let t = std::time::Instant::now();
                while t.elapsed() < std::time::Duration::from_millis(200) {}
                resp(200, b"slept".to_vec())
            }
            p => {
                let key = p.trim_start_matches('/');
                let opts = kv::WriteOptions { ttl_ms: None, if_match: None, if_absent: false };
                match req.method.as_str() {
                    "POST" => match kv::set(key, &req.body, &opts) {
                        Ok(_) => resp(200, b"ok".to_vec()),
                        Err(e) => resp(500, format!("{e:?}").into_bytes()),
                    },
                    _ => match kv::get(key) {
                        Ok(Some(e)) => resp(200, e.value),
                        Ok(None) => resp(404, vec![]),
                        Err(e) => resp(500, format!("{e:?}").into_bytes()),
                    },
                }
            }
        }
    }
}
