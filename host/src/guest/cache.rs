//! On-disk cache of compiled guests.
//!
//! JS and Python guests take 7–8 s to compile here; the cache makes every
//! start after the first one load the machine code with `deserialize_file`
//! (an mmap) instead. The file name is a hash of the component bytes and of
//! the engine's compatibility hash (wasmtime version, target, settings), so a
//! changed guest or a new sidekv never loads stale code. The cache directory
//! must be writable only by the operator: its files are trusted machine code.

use std::hash::{Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Compile `bytes`, through the cache when `dir` is set. Returns the
/// component and whether it came from the cache.
pub fn compile(engine: &Engine, bytes: &[u8], dir: Option<&Path>) -> wasmtime::Result<(Component, bool)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, bytes)?, false));
    };
    let mut h = Sha256::new();
    h.update(bytes);
    let mut eh = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut eh);
    h.update(eh.finish().to_le_bytes());
    let path = dir.join(format!("{}.cwasm", hex::encode(&h.finalize()[..16])));
    if path.exists() {
        // SAFETY: the file was written by `precompile_component` of an engine
        // with the same compatibility hash, into a directory the operator
        // controls (documented on KVSTORE_CACHE_DIR).
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok((c, true)),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cache entry"),
        }
    }
    let compiled = engine.precompile_component(bytes)?;
    // SAFETY: `compiled` was produced by this engine just now.
    let component = unsafe { Component::deserialize(engine, &compiled)? };
    if let Err(e) = write_atomically(dir, &path, &compiled) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not write the compiled-guest cache");
    }
    Ok((component, false))
}

fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
