//! Compiling guests: in a child process, through an on-disk cache.
//!
//! JS and Python guests take 7–8 s to compile here; the cache makes every
//! start after the first one load the machine code with `deserialize_file`
//! (an mmap) instead. The file name is a hash of the component bytes and of
//! the engine's compatibility hash (wasmtime version, target, settings), so a
//! changed guest or a new sidekv never loads stale code. The cache directory
//! must be writable only by the operator: its files are trusted machine code.
//!
//! A cache miss compiles in a child process (`sidekv compile-guest`: wasm on
//! stdin, machine code on stdout) when the server knows its own binary
//! (`ChildCompiler`). Cranelift's working memory (20 MiB for the default
//! guest, heaptrack) and its code pages then live and die with the child:
//! in-process, the allocator kept that memory for the server's whole life,
//! a third of its RSS. The code the child returns must deserialize in this
//! engine (same compatibility hash); when it does not, or the child cannot
//! run, the guest is compiled here as before.
//!
//! ```text
//!  load ─▶ cache hit? ── yes ─▶ deserialize_file (mmap)
//!            │ no
//!            ▼
//!          child: sidekv compile-guest  ──fails──▶ compile in process
//!            │ machine code
//!            ▼
//!          write the cache entry ─▶ deserialize_file (or deserialize)
//! ```

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How to run `sidekv compile-guest` for this engine: the binary, and the
/// settings that shape the engine (instance mode, memory cap), as flags.
#[derive(Clone, Debug)]
pub struct ChildCompiler {
    pub exe: PathBuf,
    pub args: Vec<String>,
}

impl ChildCompiler {
    /// Compile `bytes` in the child; its machine code, or why not.
    fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let mut child = Command::new(&self.exe)
            .args(&self.args)
            .arg("compile-guest")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.exe.display()))?;
        let (mut stdin, mut stderr) = (child.stdin.take().expect("piped"), child.stderr.take().expect("piped"));
        let mut code = Vec::new();
        // All three pipes at once, each on its own thread but stdout: they
        // are bounded, and the child may write either output (a debug log
        // of the compiler is megabytes) while it still reads.
        let (fed, read, stderr) = std::thread::scope(|s| {
            let feeder = s.spawn(move || stdin.write_all(bytes));
            let errors = s.spawn(move || tail(&mut stderr, STDERR_TAIL));
            let read = child.stdout.take().expect("piped").read_to_end(&mut code);
            (feeder.join(), read, errors.join().unwrap_or_default())
        });
        let fed = fed.map_err(|_| "the stdin feeder panicked".to_string())?;
        let status = child.wait().map_err(|e| format!("waiting for the compiler: {e}"))?;
        if !status.success() {
            let last = stderr.lines().last().unwrap_or("").trim();
            return Err(format!("the compiler exited with {status}: {last}"));
        }
        fed.map_err(|e| format!("sending the guest: {e}"))?;
        read.map_err(|e| format!("reading the machine code: {e}"))?;
        Ok(code)
    }
}

/// Where a loaded guest's machine code came from (logged at load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Cache,
    ChildProcess,
    ThisProcess,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Cache => "cache",
            Origin::ChildProcess => "child process",
            Origin::ThisProcess => "this process",
        }
    }
}

/// How much of the child's stderr is kept for an error message.
const STDERR_TAIL: usize = 4096;

/// Read `r` to its end, keeping the last `keep` bytes, as text.
fn tail(r: &mut impl Read, keep: usize) -> String {
    let (mut kept, mut buf) = (Vec::new(), [0u8; 8192]);
    while let Ok(n @ 1..) = r.read(&mut buf) {
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * keep {
            kept.drain(..kept.len() - keep);
        }
    }
    let from = kept.len().saturating_sub(keep);
    String::from_utf8_lossy(&kept[from..]).into_owned()
}

/// Compile `bytes`, through the cache when `dir` is set, in a child when
/// `child` is set. Returns the component and where its code came from.
pub fn compile(engine: &Engine, bytes: &[u8], dir: Option<&Path>, child: Option<&ChildCompiler>) -> wasmtime::Result<(Component, Origin)> {
    let path = dir.map(|d| d.join(format!("{}.cwasm", entry_name(engine, bytes))));
    if let Some(path) = path.as_deref().filter(|p| p.exists()) {
        // SAFETY: the file was written by `precompile_component` of an engine
        // with the same compatibility hash, into a directory the operator
        // controls (documented on KVSTORE_CACHE_DIR).
        match unsafe { Component::deserialize_file(engine, path) } {
            Ok(c) => return Ok((c, Origin::Cache)),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cache entry"),
        }
    }
    if let Some(c) = child {
        match c.precompile(bytes).map_err(wasmtime::Error::msg).and_then(|code| store(engine, &code, path.as_deref())) {
            Ok(component) => return Ok((component, Origin::ChildProcess)),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "compiling the guest in a child process failed; compiling in this one"),
        }
    }
    let code = engine.precompile_component(bytes)?;
    Ok((store(engine, &code, path.as_deref())?, Origin::ThisProcess))
}

/// The cache file name: the component's hash and the engine's.
fn entry_name(engine: &Engine, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    let mut eh = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut eh);
    h.update(eh.finish().to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Load compiled `code` into `engine`, writing the cache entry at `path`
/// first when there is a cache (then the code is mapped from it, not copied).
fn store(engine: &Engine, code: &[u8], path: Option<&Path>) -> wasmtime::Result<Component> {
    if let Some(path) = path {
        match write_atomically(path, code) {
            // SAFETY: `code` came from this engine's `precompile_component`
            // or from our own binary's, and is checked against this engine's
            // compatibility hash on load; the file is the operator's.
            Ok(()) => return unsafe { Component::deserialize_file(engine, path) },
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not write the compiled-guest cache"),
        }
    }
    // SAFETY: as above.
    unsafe { Component::deserialize(engine, code) }
}

/// `sidekv compile-guest`: a component on stdin, its machine code for
/// `engine` on stdout.
pub fn compile_child_main(engine: &Engine) -> Result<(), String> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).map_err(|e| format!("reading the component from stdin: {e}"))?;
    let code = engine.precompile_component(&bytes).map_err(|e| format!("compiling: {e:#}"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&code).and_then(|()| out.flush()).map_err(|e| format!("writing the machine code: {e}"))
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::{DEFAULT_GUEST, make_engine};

    fn engine() -> Engine {
        use clap::Parser;
        make_engine(&crate::config::Config::parse_from(["sidekv"]).guest_options().unwrap()).unwrap()
    }

    fn child(exe: &str, args: &[&str]) -> ChildCompiler {
        ChildCompiler { exe: exe.into(), args: args.iter().map(|a| a.to_string()).collect() }
    }

    /// A child that cannot run, fails, or returns something that is not
    /// machine code for this engine: the guest is compiled here instead,
    /// and what is cached is this engine's code.
    #[test]
    fn a_failing_child_falls_back_to_compiling_here() {
        assert!(!DEFAULT_GUEST.is_empty(), "built without the default guest: run `make build`");
        let engine = engine();
        let cases = [
            child("/nonexistent/sidekv", &[]),
            child("/bin/sh", &["-c", "echo 'compile-guest: no such thing' >&2; exit 3"]),
            // Echoes the component back: wasm, not machine code.
            child("/bin/sh", &["-c", "cat"]),
        ];
        for c in &cases {
            let dir = tempfile::tempdir().unwrap();
            let (_, origin) = compile(&engine, DEFAULT_GUEST, Some(dir.path()), Some(c)).unwrap();
            assert_eq!(origin, Origin::ThisProcess, "{c:?}");
            let (_, origin) = compile(&engine, DEFAULT_GUEST, Some(dir.path()), Some(c)).unwrap();
            assert_eq!(origin, Origin::Cache, "{c:?}: the fallback's code was cached");
        }
        // Megabytes on stderr (RUST_LOG=debug in a child) before any output.
        let chatty = child("/bin/sh", &["-c", "head -c 4000000 /dev/zero | tr '\\0' x >&2; echo done >&2; cat"]);
        let (_, origin) = compile(&engine, DEFAULT_GUEST, None, Some(&chatty)).unwrap();
        assert_eq!(origin, Origin::ThisProcess);
        let err = cases[1].precompile(b"").unwrap_err();
        assert!(err.contains("exit status: 3") && err.contains("no such thing"), "{err}");
    }

    /// A child's output is used as is, cached or not.
    #[test]
    fn a_child_s_machine_code_is_loaded() {
        let engine = engine();
        let code = engine.precompile_component(DEFAULT_GUEST).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("code.cwasm");
        std::fs::write(&file, &code).unwrap();
        let cat = child("/bin/sh", &["-c", &format!("cat >/dev/null; cat '{}'", file.display())]);
        for cache in [None, Some(dir.path().join("cache"))] {
            let (_, origin) = compile(&engine, DEFAULT_GUEST, cache.as_deref(), Some(&cat)).unwrap();
            assert_eq!(origin, Origin::ChildProcess);
        }
    }
}
