//! The metadata exchange (`POST <url>` with JSON), version negotiation and
//! the data path request headers.
//!
//! # The exchange
//!
//! `Deno.openKv("https://host/kv")` first `POST`s to that exact URL with
//! `Authorization: Bearer <access token>`, `Content-Type: application/json`
//! and the body `{"supportedVersions":[1,2,3]}` (Deno's CLI and npm
//! `@deno/kv` both send `[1, 2, 3]`; a body-less request means "version 1
//! only"). The server picks a version ([`negotiate`]), checks the token and
//! answers `200` with `Content-Type: application/json` (exactly that: npm
//! `@deno/kv` compares the header verbatim, so no `; charset=…`) and a
//! [`DatabaseMetadata`] body:
//!
//! ```json
//! {"version":3,"databaseId":"00000000-0000-0000-0000-000000000000",
//!  "endpoints":[{"url":"/kv/v3","consistency":"strong"}],
//!  "token":"…","expiresAt":"2030-01-01T00:00:00Z"}
//! ```
//!
//! `token` is what the client then sends as `Authorization: Bearer <token>`
//! on every data path request (denokv simply echoes the access token).
//! `expiresAt` must be comfortably in the future: Deno's CLI re-fetches
//! metadata at `min(expiresAt - 10 s, 60 s)` from now, so an `expiresAt` in
//! the past makes it re-fetch in a tight loop. One hour or more is right
//! (denokv uses a day); either way the CLI refreshes about once a minute.
//!
//! Errors here: `4xx` with a plain-text body is fatal for the client (bad
//! token, unparsable body, no common version); `5xx` makes it retry with
//! backoff forever; a `3xx` is followed and the redirect target becomes the
//! base URL for relative endpoint URLs.
//!
//! # Versions
//!
//! | | v1 | v2 | v3 |
//! |---|---|---|---|
//! | metadata JSON | `version: 1`, same camelCase fields | `version: 2` | `version: 3` |
//! | endpoint `url` | absolute URL only (Deno's CLI parses it without a base) | absolute, or relative to the (redirected) metadata URL | same as v2 |
//! | data path headers | `x-transaction-domain-id: <databaseId>` | `x-denokv-database-id: <databaseId>`, `x-denokv-version: 2` | same, `x-denokv-version: 3` |
//! | snapshot read result | client reads `read_disabled` | + `read_is_strongly_consistent` | client reads `status` (`SR_UNSPECIFIED` is fatal) instead of `read_disabled` |
//! | watch | – | – | `POST <endpoint>/watch` |
//!
//! The JSON shape is the same for all three (camelCase `databaseId`,
//! `expiresAt`; no snake_case anywhere); the published request schema only
//! lists versions 1 and 2 but clients send 3, so don't validate against it.
//! Fill every output field for all versions at once (see
//! [`crate::datapath::SnapshotReadOutput::success`]) and one handler serves
//! all three. In every version an endpoint URL must not end with `/` (Deno's
//! CLI rejects even `"/"`), must be `http(s)` and carry no query or fragment:
//! the client appends `/snapshot_read`, `/atomic_write` or `/watch`.
//!
//! Deno's CLI uses the first `strong` endpoint for everything (reads, writes
//! and watches); npm `@deno/kv` may send reads and watches to an `eventual`
//! one. sidekv has one endpoint: `strong`.

use serde::{Deserialize, Serialize};

/// The protocol versions this crate implements.
pub const SUPPORTED_VERSIONS: [u64; 3] = [1, 2, 3];

/// Header carrying the protocol version on v2+ data path requests.
pub const HEADER_DENOKV_VERSION: &str = "x-denokv-version";
/// Header carrying the database id on v2+ data path requests.
pub const HEADER_DENOKV_DATABASE_ID: &str = "x-denokv-database-id";
/// Header carrying the database id on v1 data path requests.
pub const HEADER_TRANSACTION_DOMAIN_ID: &str = "x-transaction-domain-id";

/// `Content-Type` of the metadata response (compared verbatim by npm `@deno/kv`).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `Content-Type` of `snapshot_read` / `atomic_write` responses.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// `Content-Type` of the `watch` response stream.
pub const CONTENT_TYPE_WATCH: &str = "application/octet-stream";

/// `EndpointInfo.consistency` of an endpoint that serves strong reads and writes.
pub const CONSISTENCY_STRONG: &str = "strong";
/// `EndpointInfo.consistency` of a read-only, eventually consistent endpoint.
pub const CONSISTENCY_EVENTUAL: &str = "eventual";

/// A negotiated KV Connect protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    V1 = 1,
    V2 = 2,
    V3 = 3,
}

impl ProtocolVersion {
    /// The version numbered `n`, if this crate implements it.
    pub fn from_number(n: u64) -> Option<ProtocolVersion> {
        match n {
            1 => Some(ProtocolVersion::V1),
            2 => Some(ProtocolVersion::V2),
            3 => Some(ProtocolVersion::V3),
            _ => None,
        }
    }

    /// The version's number (the JSON `version`, the `x-denokv-version` value).
    pub fn number(self) -> u64 {
        self as u64
    }

    /// The header a client of this version sends the database id in.
    pub fn database_id_header(self) -> &'static str {
        match self {
            ProtocolVersion::V1 => HEADER_TRANSACTION_DOMAIN_ID,
            ProtocolVersion::V2 | ProtocolVersion::V3 => HEADER_DENOKV_DATABASE_ID,
        }
    }

    /// Whether endpoint URLs may be relative to the metadata URL (v2+).
    pub fn allows_relative_endpoint_urls(self) -> bool {
        self >= ProtocolVersion::V2
    }

    /// Whether the client reads `SnapshotReadOutput.status` (v3) rather than `read_disabled`.
    pub fn uses_read_status(self) -> bool {
        self >= ProtocolVersion::V3
    }

    /// Whether the watch operation exists in this version (v3).
    pub fn supports_watch(self) -> bool {
        self >= ProtocolVersion::V3
    }
}

/// What went wrong in the metadata exchange or with data path headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("invalid metadata exchange request body: {0}")]
    InvalidRequestBody(String),
    #[error("no common KV Connect protocol version: the client supports {client:?}, this server supports {server:?}")]
    NoCommonVersion { client: Vec<u64>, server: Vec<u64> },
    #[error("missing or malformed Authorization header (expected \"Bearer <token>\")")]
    MalformedAuthorization,
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("invalid {header} header {value:?}: {reason}")]
    InvalidHeader { header: &'static str, value: String, reason: &'static str },
    #[error("invalid database metadata: {0}")]
    InvalidMetadata(String),
}

impl MetadataError {
    /// The HTTP status to answer with: 401 for a missing/malformed
    /// Authorization header, 400 otherwise (all fatal for the client;
    /// `InvalidMetadata` is a server bug and would be a 500).
    pub fn http_status(&self) -> u16 {
        match self {
            MetadataError::MalformedAuthorization => 401,
            MetadataError::InvalidMetadata(_) => 500,
            _ => 400,
        }
    }
}

/// The metadata exchange request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataExchangeRequest {
    /// The protocol versions the client implements.
    pub supported_versions: Vec<u64>,
}

/// Parse a metadata exchange request body. An empty (or all-whitespace)
/// body means a version-1-only client, as the spec says. Unknown fields are
/// ignored (as denokv does), so a future client field does not break the
/// exchange.
pub fn parse_metadata_request(body: &[u8]) -> Result<MetadataExchangeRequest, MetadataError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(MetadataExchangeRequest { supported_versions: vec![1] });
    }
    serde_json::from_slice(body).map_err(|e| MetadataError::InvalidRequestBody(e.to_string()))
}

/// The highest version in both `client_supported` and `server_supported`.
pub fn negotiate_version(client_supported: &[u64], server_supported: &[u64]) -> Option<u64> {
    client_supported.iter().copied().filter(|v| server_supported.contains(v)).max()
}

/// Negotiate against [`SUPPORTED_VERSIONS`] (or a subset the server enables).
pub fn negotiate(request: &MetadataExchangeRequest, server_supported: &[u64]) -> Result<ProtocolVersion, MetadataError> {
    negotiate_version(&request.supported_versions, server_supported)
        .and_then(ProtocolVersion::from_number)
        .ok_or_else(|| MetadataError::NoCommonVersion { client: request.supported_versions.clone(), server: server_supported.to_vec() })
}

/// A data path endpoint in [`DatabaseMetadata`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointInfo {
    /// Absolute URL (v1), or absolute or relative to the metadata URL (v2+);
    /// no trailing `/`, query or fragment.
    pub url: String,
    /// [`CONSISTENCY_STRONG`] or [`CONSISTENCY_EVENTUAL`].
    pub consistency: String,
}

/// The metadata exchange response body (`kv-metadata-exchange-response.v<N>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseMetadata {
    /// The negotiated version.
    pub version: u64,
    /// Lowercase hyphenated UUID (npm `@deno/kv` rejects uppercase).
    pub database_id: String,
    /// At least one, and at least one `strong`.
    pub endpoints: Vec<EndpointInfo>,
    /// The bearer token for data path requests; non-empty.
    pub token: String,
    /// RFC 3339 UTC, `YYYY-MM-DDTHH:MM:SS[.fff]Z` ([`format_expires_at`]).
    pub expires_at: String,
}

impl DatabaseMetadata {
    /// Metadata with one strong endpoint.
    pub fn new(version: ProtocolVersion, database_id: &str, endpoint_url: &str, token: &str, expires_at_unix_ms: i64) -> DatabaseMetadata {
        DatabaseMetadata {
            version: version.number(),
            database_id: database_id.to_owned(),
            endpoints: vec![EndpointInfo { url: endpoint_url.to_owned(), consistency: CONSISTENCY_STRONG.to_owned() }],
            token: token.to_owned(),
            expires_at: format_expires_at(expires_at_unix_ms),
        }
    }

    /// Check everything Deno's CLI and npm `@deno/kv` check before they accept metadata.
    pub fn validate(&self) -> Result<(), MetadataError> {
        let bad = |m: String| Err(MetadataError::InvalidMetadata(m));
        let Some(version) = ProtocolVersion::from_number(self.version) else {
            return bad(format!("version {} is not 1, 2 or 3", self.version));
        };
        if !is_lowercase_uuid(&self.database_id) {
            return bad(format!("databaseId {:?} is not a lowercase hyphenated UUID", self.database_id));
        }
        if self.token.is_empty() {
            return bad("token is empty".to_owned());
        }
        if !is_rfc3339_utc(&self.expires_at) {
            return bad(format!("expiresAt {:?} is not YYYY-MM-DDTHH:MM:SS[.fff]Z", self.expires_at));
        }
        if self.endpoints.is_empty() {
            return bad("no endpoints".to_owned());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.consistency != CONSISTENCY_STRONG && e.consistency != CONSISTENCY_EVENTUAL {
                return bad(format!("endpoints[{i}].consistency {:?} is not \"strong\" or \"eventual\"", e.consistency));
            }
            if let Err(reason) = check_endpoint_url(version, &e.url) {
                return bad(format!("endpoints[{i}].url {:?} {reason}", e.url));
            }
        }
        if !self.endpoints.iter().any(|e| e.consistency == CONSISTENCY_STRONG) {
            return bad("no endpoint has consistency \"strong\"".to_owned());
        }
        Ok(())
    }

    /// The response body.
    pub fn to_json(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn check_endpoint_url(version: ProtocolVersion, url: &str) -> Result<(), &'static str> {
    if url.is_empty() {
        return Err("is empty");
    }
    if url.ends_with('/') {
        return Err("ends with '/' (clients append \"/snapshot_read\" etc.)");
    }
    if url.contains('?') || url.contains('#') {
        return Err("has a query or fragment");
    }
    let absolute = url.starts_with("http://") || url.starts_with("https://");
    if !absolute {
        if url.contains("://") {
            return Err("is not http or https");
        }
        if !version.allows_relative_endpoint_urls() {
            return Err("must be an absolute http(s) URL in protocol version 1");
        }
    }
    Ok(())
}

fn is_lowercase_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// `^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$` (npm `@deno/kv`'s check;
/// Deno's CLI parses with chrono, which accepts this too).
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return false;
    }
    let shape_ok = b[..19].iter().enumerate().all(|(i, &c)| match i {
        4 | 7 => c == b'-',
        10 => c == b'T',
        13 | 16 => c == b':',
        _ => c.is_ascii_digit(),
    });
    let frac = &b[19..b.len() - 1];
    shape_ok && (frac.is_empty() || (frac.len() >= 2 && frac[0] == b'.' && frac[1..].iter().all(u8::is_ascii_digit)))
}

/// Format ms since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (whole seconds,
/// rounded down; years 0000–9999), without a date library.
pub fn format_expires_at(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The token of an `Authorization: Bearer <token>` header (scheme
/// case-insensitive, as denokv accepts). Compare it in constant time.
pub fn parse_bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The version and database id headers of a data path request, as sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct DatapathHeaders<'a> {
    /// `x-denokv-version` (v2+).
    pub denokv_version: Option<&'a str>,
    /// `x-denokv-database-id` (v2+).
    pub denokv_database_id: Option<&'a str>,
    /// `x-transaction-domain-id` (v1).
    pub transaction_domain_id: Option<&'a str>,
}

/// The protocol version a data path request speaks, after checking that it
/// names `database_id` (compared case-insensitively). A request with
/// `x-denokv-version` is v2/v3 and must carry `x-denokv-database-id`; one
/// without is v1 and must carry `x-transaction-domain-id`. The
/// `Content-Type` request header is *not* checked on purpose: neither Deno's
/// CLI nor npm `@deno/kv` sends `application/x-protobuf`, whatever the spec says.
pub fn datapath_version(headers: &DatapathHeaders<'_>, database_id: &str) -> Result<ProtocolVersion, MetadataError> {
    let version = match headers.denokv_version {
        Some(raw) => {
            raw.trim().parse::<u64>().ok().and_then(ProtocolVersion::from_number).filter(|v| *v >= ProtocolVersion::V2).ok_or_else(
                || MetadataError::InvalidHeader {
                    header: HEADER_DENOKV_VERSION,
                    value: raw.chars().take(64).collect(),
                    reason: "expected 2 or 3",
                },
            )?
        }
        None => ProtocolVersion::V1,
    };
    let header = version.database_id_header();
    let sent = if version == ProtocolVersion::V1 { headers.transaction_domain_id } else { headers.denokv_database_id };
    let sent = sent.ok_or(MetadataError::MissingHeader(header))?;
    if !sent.trim().eq_ignore_ascii_case(database_id) {
        return Err(MetadataError::InvalidHeader {
            header,
            value: sent.chars().take(64).collect(),
            reason: "not this database's id (re-run the metadata exchange)",
        });
    }
    Ok(version)
}
