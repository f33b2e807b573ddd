//! The `ObjectStore` contract: one suite every object store the replica can
//! use passes — the directory store (`file:///dir`) and S3 (moto, over the
//! network) — as litestream runs one suite against every replica client.
//! Restore, retention and fencing rest on exactly these promises:
//! create-if-absent refuses an existing key and keeps its content, listing
//! is relative and ascending, streamed and whole reads agree, delete is
//! idempotent, sizes are reported.

mod common;

use std::path::Path;

use sidekv::backend::sqlite::replica::objects::{self, ObjectStore};

const PART: u64 = 5 << 20;

async fn contract(store: &dyn ObjectStore, tmp: &Path) {
    // Empty listings are empty, not errors.
    assert_eq!(store.list("segments").await.unwrap(), Vec::<String>::new(), "a fresh store lists nothing");
    // Create-if-absent: the first wins, the second is refused and changes nothing.
    assert!(store.put_new("segments/00000000000000000002.seg.zst", b"two".to_vec()).await.unwrap());
    assert!(store.put_new("segments/00000000000000000001.seg.zst", b"one".to_vec()).await.unwrap());
    assert!(!store.put_new("segments/00000000000000000001.seg.zst", b"other".to_vec()).await.unwrap(), "an existing key was overwritten");
    assert_eq!(store.get("segments/00000000000000000001.seg.zst").await.unwrap(), b"one");
    // Listing: relative keys under the directory only, ascending.
    assert!(store.put_new("snapshots/00000000000000000001.sqlite3.zst", b"snap".to_vec()).await.unwrap());
    assert_eq!(
        store.list("segments").await.unwrap(),
        vec!["segments/00000000000000000001.seg.zst".to_string(), "segments/00000000000000000002.seg.zst".to_string()]
    );
    let meta = store.list_meta("segments").await.unwrap();
    assert_eq!(meta.iter().map(|o| o.bytes).collect::<Vec<_>>(), [3, 3], "sizes");
    assert!(meta.iter().all(|o| o.modified_ms > 0), "modification times");
    // A missing object is an error that names it.
    let err = store.get("segments/absent").await.unwrap_err().to_string();
    assert!(err.contains("absent"), "{err}");
    // Streamed upload and download of a file larger than one part.
    let big: Vec<u8> = (0..(PART as usize + 123_457)).map(|i| (i * 31 % 251) as u8).collect();
    let src = tmp.join("big.in");
    std::fs::write(&src, &big).unwrap();
    assert!(store.put_new_file("snapshots/00000000000000000009.sqlite3.zst", &src).await.unwrap());
    assert!(!store.put_new_file("snapshots/00000000000000000009.sqlite3.zst", &src).await.unwrap(), "a streamed put overwrote");
    let dst = tmp.join("big.out");
    assert_eq!(store.get_to_file("snapshots/00000000000000000009.sqlite3.zst", &dst).await.unwrap(), big.len() as u64);
    assert!(std::fs::read(&dst).unwrap() == big, "the streamed download differs");
    assert!(store.get("snapshots/00000000000000000009.sqlite3.zst").await.unwrap() == big, "whole and streamed reads differ");
    // Delete: gone from reads and listings; deleting again is fine.
    store.delete("segments/00000000000000000001.seg.zst").await.unwrap();
    store.delete("segments/00000000000000000001.seg.zst").await.unwrap();
    assert_eq!(store.list("segments").await.unwrap(), vec!["segments/00000000000000000002.seg.zst".to_string()]);
    assert!(store.get("segments/00000000000000000001.seg.zst").await.is_err());
    // A deleted key can be created again (retention, then a new history).
    assert!(store.put_new("segments/00000000000000000001.seg.zst", b"again".to_vec()).await.unwrap());
    assert!(store.name("segments/x").ends_with("segments/x"), "{}", store.name("segments/x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_store_keeps_the_contract() {
    let d = common::tempdir();
    let url = format!("file://{}", d.path().join("backup").display());
    let store = objects::open(&url, PART).await.unwrap();
    contract(store.as_ref(), d.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_keeps_the_contract() {
    let s3 = tokio::task::block_in_place(common::S3::start);
    s3.create_bucket("contract").await;
    // The SDK reads these from the process environment (this test binary
    // has this one S3 test, so nothing else sees them).
    let opts = s3.env(common::Opts::default(), "contract", "p");
    for (k, v) in &opts.env {
        if k.starts_with("AWS_") {
            unsafe { std::env::set_var(k, v) };
        }
    }
    unsafe { std::env::remove_var("AWS_CA_BUNDLE") };
    let d = common::tempdir();
    let store = objects::open("s3://contract/p", PART).await.unwrap();
    contract(store.as_ref(), d.path()).await;
}
