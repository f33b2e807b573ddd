//! The `sidekv` binary: parse config, start tracing, bind, `run`.
//! Subcommands (`restore`, `snapshot`, `health`, `check-config`, and the
//! internal `compile-guest`) are here too.

use anyhow::Context;
use clap::Parser;
use sidekv::backend::sqlite::commands;
use sidekv::config::{Command, Config};
use tracing_subscriber::EnvFilter;

// The static musl build (the container image): musl's allocator serialises
// threads on one lock, mimalloc does not.
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    // A log line that cannot be written (stderr on a full disk, a closed
    // pipe) is dropped: tracing-subscriber's fallback is `eprintln!`, which
    // panics, and on the writer thread that stops every write for good.
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).log_internal_errors(false);
    if format == "json" {
        b.json().flatten_event(true).init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Exit status of a stop that left commits outside the backup (a lost
/// disk would lose them): distinct from a failed start (1) and bad settings (2).
const EXIT_NOT_BACKED_UP: i32 = 3;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("sidekv: {e:#}");
        let code = if e.downcast_ref::<sidekv::backend::NotBackedUp>().is_some() { EXIT_NOT_BACKED_UP } else { 1 };
        std::process::exit(code);
    }
}

fn real_main() -> anyhow::Result<()> {
    let mut config = Config::parse();
    init_tracing(&config.admin.log_format);
    if let Err(e) = config.validate() {
        eprintln!("sidekv: invalid configuration: {e}");
        std::process::exit(2);
    }
    // Guests are compiled by a child process of this same binary.
    config.guest.compiler = std::env::current_exe().ok();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match config.command.clone() {
            None | Some(Command::Serve) => {
                if config.secret.is_none() {
                    let secret = format!("{:032x}", rand::random::<u128>());
                    // Printed once, on stdout, never logged.
                    println!("generated KVSTORE_SECRET={secret} (set KVSTORE_SECRET to choose your own)");
                    config.secret = Some(secret);
                }
                let listener = tokio::net::TcpListener::bind(config.http.listen_addr())
                    .await
                    .with_context(|| format!("binding {} (HOST/PORT)", config.http.listen_addr()))?;
                let admin = match config.admin.addr {
                    Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| format!("binding KVSTORE_ADMIN_ADDR {a}"))?),
                    None => None,
                };
                if let Some(a) = &admin {
                    println!("admin on http://{}", a.local_addr()?);
                    println!("console on http://{}/console/", a.local_addr()?);
                }
                sidekv::run(config, listener, admin, shutdown_signal()).await
            }
            Some(Command::Restore { to, at }) => {
                let at = at.map(|s| s.parse()).transpose().context("--at")?;
                let commit = commands::restore(config.backup.replica_options().as_ref(), &to, at).await?;
                println!("restored {} at commit {commit}", to.display());
                Ok(())
            }
            Some(Command::Snapshot) => {
                commands::snapshot(&config.sqlite_options()).await?;
                println!("snapshot stored");
                Ok(())
            }
            Some(Command::Health { addr }) => {
                let addr = addr.or(config.admin.addr).context("health needs --addr or KVSTORE_ADMIN_ADDR")?;
                let ok = sidekv::http::probe_ready(addr).await;
                match ok {
                    Ok(()) => {
                        println!("ready");
                        Ok(())
                    }
                    Err(e) => {
                        eprintln!("not ready: {e}");
                        std::process::exit(1);
                    }
                }
            }
            // A child of the server (guest/cache.rs): its stdout is the result.
            Some(Command::CompileGuest) => sidekv::guest::compile_guest_main(&config.guest_options()?).map_err(anyhow::Error::msg),
            Some(Command::CheckConfig) => {
                let mut problems = 0;
                if let Some(backup) = config.backup.replica_options() {
                    let url = &backup.url;
                    match commands::check_s3(&backup).await {
                        Ok(()) => println!("ok   S3 {url}: reachable, writable, conditional writes honoured (fencing works)"),
                        Err(e) => {
                            problems += 1;
                            println!("FAIL S3 {url}: {e}")
                        }
                    }
                } else {
                    println!("ok   S3 backup off (KVSTORE_S3_URL unset)");
                }
                let store_dir = tempfile_dir()?;
                let kv = sidekv::backend::sqlite::scratch(&store_dir.join("check.sqlite3"))?;
                let src = config.guest.source();
                let loaded = match sidekv::guest::GuestRuntime::new(&src, config.guest_options()?, kv.clone()) {
                    Ok(rt) => rt.warm_up().await,
                    Err(e) => Err(e),
                };
                match loaded {
                    Ok(()) => println!("ok   guest {} loads", src.name()),
                    Err(e) => {
                        problems += 1;
                        println!("FAIL guest: {e}")
                    }
                }
                let _ = kv.shutdown(tokio::time::Instant::now() + std::time::Duration::from_secs(5)).await;
                let _ = std::fs::remove_dir_all(&store_dir);
                if let Some(url) = config.storage.postgres_url() {
                    match sidekv::backend::postgres::check(url).await {
                        Ok(what) => println!("ok   {}: {what}", config.storage.describe()),
                        Err(e) => {
                            problems += 1;
                            println!("FAIL {}: {e}", config.storage.describe())
                        }
                    }
                } else if config.storage.db.exists() {
                    println!("ok   database {} exists", config.storage.db.display());
                } else {
                    println!("ok   database {} will be created (or restored from S3)", config.storage.db.display());
                }
                if problems > 0 {
                    std::process::exit(1);
                }
                Ok(())
            }
        }
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("sidekv-check-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
