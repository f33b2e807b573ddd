//! KV Connect: Deno KV clients (`Deno.openKv(url)`, npm `@deno/kv`) use
//! sidekv directly at `http://HOST:PORT/_kv`.
//!
//! The protocol (routing, decoding, Deno's limits, answers) is
//! `sidekv_kvconnect::server`, and the store is the host's `typed-kv`
//! (`typed_kv_store!`); this module adds this guest's access rule: the
//! token is the secret (`Authorization: Bearer <secret>`), reads need read
//! access and writes write access, decided by `authorize` like every REST
//! request.

use sidekv_kvconnect::server::{self, Access as KvAccess, Answer};

use crate::sidekv::store::{kv, queue, typed_kv, types};
use crate::{Access, BodyStream, Request, Resp, Response, auth_config, authorize};

sidekv_kvconnect::typed_kv_store!(TypedKv, queue);

/// An answer of the protocol code as a guest response.
fn response(a: Answer) -> Resp {
    Response {
        status: a.status,
        headers: vec![("content-type".into(), a.content_type.as_bytes().to_vec())],
        body: a.body,
        stream: a.watch.map(BodyStream::KvWatch),
    }
}

/// `/_kv` and below: `sub` is what follows `/_kv` ("" or "/snapshot_read"...).
pub fn route(req: &Request, sub: &str) -> Resp {
    let header = |name: &str| crate::header(req, name).and_then(|v| std::str::from_utf8(v).ok());
    let http = server::HttpIn { method: &req.method, sub_path: sub, header: &header, body: &req.body };
    let allow = |_: Option<&str>, what: KvAccess<'_>| {
        let access = match what {
            KvAccess::Connect | KvAccess::Read(_) => Access::Read,
            KvAccess::Write(..) | KvAccess::Enqueue(_) => Access::Write,
        };
        authorize(req, access).map_err(|r| server::refusal(r.status, &r.body))
    };
    // The database id follows from the secret: the same across restarts and
    // across sidecars sharing it.
    let database_id = server::uuid_from(&auth_config().secret_hash().copied().unwrap_or([0; 32]));
    response(server::handle(&http, "/_kv", &database_id, crate::now_ms(), &TypedKv, &allow))
}
