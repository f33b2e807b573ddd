//! Connecting to PostgreSQL: the URL (libpq style, with libpq's `PG*`
//! variables filling what it leaves out), optional TLS (rustls, the
//! system's CA certificates), and the connection pool.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;

/// Why a PostgreSQL URL or its settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("KVSTORE_BACKEND is not a usable PostgreSQL URL: {0}")]
    Url(String),
    #[error("TLS for PostgreSQL: {0}")]
    Tls(String),
    #[error("creating the PostgreSQL connection pool: {0}")]
    Pool(String),
}

/// The connection settings: the URL, then `PGHOST`, `PGPORT`, `PGUSER`,
/// `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE` for whatever it does not say.
pub fn pg_config(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<tokio_postgres::Config, ConnectError> {
    let mut c = tokio_postgres::Config::from_str(url).map_err(|e| ConnectError::Url(e.to_string()))?;
    if c.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(h) if h.starts_with('/') => c.host_path(h),
            Some(h) => c.host(&h),
            None => c.host("localhost"),
        };
    }
    if c.get_ports().is_empty()
        && let Some(p) = env("PGPORT")
    {
        c.port(p.parse().map_err(|_| ConnectError::Url(format!("PGPORT {p:?} is not a port")))?);
    }
    if c.get_user().is_none() {
        c.user(env("PGUSER").as_deref().unwrap_or("postgres"));
    }
    if c.get_password().is_none()
        && let Some(p) = env("PGPASSWORD")
    {
        c.password(p);
    }
    if c.get_dbname().is_none()
        && let Some(d) = env("PGDATABASE")
    {
        c.dbname(&d);
    }
    if !url.contains("sslmode=")
        && let Some(m) = env("PGSSLMODE")
    {
        c.ssl_mode(match m.as_str() {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" | "verify-ca" | "verify-full" => SslMode::Require,
            other => return Err(ConnectError::Url(format!("PGSSLMODE {other:?} is not disable, prefer or require"))),
        });
    }
    c.application_name("sidekv");
    c.connect_timeout(crate::limits::PG_CONNECT_TIMEOUT);
    Ok(c)
}

pub fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, ConnectError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A pool of at most `size` connections (TLS when the URL's `sslmode`
/// asks for it; `prefer`, the default, uses it when the server offers it).
pub fn pool(config: tokio_postgres::Config, size: usize) -> Result<Pool, ConnectError> {
    let mgr = Manager::from_config(config, tls()?, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(crate::limits::PG_CONNECT_TIMEOUT))
        .build()
        .map_err(|e| ConnectError::Pool(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_wins_and_pg_variables_fill_the_rest() {
        let env = |k: &str| match k {
            "PGHOST" => Some("db.internal".to_string()),
            "PGPORT" => Some("6543".to_string()),
            "PGUSER" => Some("app".to_string()),
            "PGPASSWORD" => Some("pw".to_string()),
            "PGDATABASE" => Some("kv".to_string()),
            _ => None,
        };
        let c = pg_config("postgres://", env).unwrap();
        assert_eq!(c.get_user(), Some("app"));
        assert_eq!(c.get_dbname(), Some("kv"));
        assert_eq!(c.get_ports(), &[6543]);
        assert_eq!(c.get_password(), Some(b"pw".as_slice()));
        let c = pg_config("postgres://me@127.0.0.1:5432/mine?sslmode=disable", env).unwrap();
        assert_eq!((c.get_user(), c.get_dbname(), c.get_ports()), (Some("me"), Some("mine"), &[5432u16][..]));
        assert_eq!(c.get_ssl_mode(), SslMode::Disable);
        assert!(pg_config("postgres://x@h/db", |k| (k == "PGSSLMODE").then(|| "sometimes".to_string())).is_err());
        assert!(pg_config("postgres://h:notaport/db", |_| None).is_err());
    }
}
